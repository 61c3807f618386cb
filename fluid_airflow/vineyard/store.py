"""Vineyard objects behind XCom references: store, resolve, release.

The XCom backend (:mod:`fluid_airflow.vineyard.xcom`) picks the client; these functions do the
Vineyard calls, each bounded by the client's ``timeout_seconds`` and with connection failures
named by :func:`fluid_airflow.vineyard.client.calls.guarded`.
"""

from __future__ import annotations

import json
import logging
import socket
from collections import namedtuple
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.xcom import BaseXCom

from fluid_airflow import config
from fluid_airflow import exceptions as errors
from fluid_airflow.vineyard.client import arrow_stream, calls
from fluid_airflow.vineyard.data import codec
from fluid_airflow.vineyard.data.naming import XComScope
from fluid_airflow.vineyard.data.reference import VineyardReference
from fluid_airflow.vineyard.lifecycle import admission, inflight, migration
from fluid_airflow.vineyard.lifecycle.delete import delete_named

if TYPE_CHECKING:
    from vineyard import Client

log = logging.getLogger(__name__)

_Result = namedtuple("_Result", ["value"])


def put(client: Client, encoded: codec.Encoded, original: Any, scope: XComScope) -> VineyardReference:
    """Put ``encoded`` (made from ``original``) under its run-scoped name and return the reference.

    The put is read back and checked before the name is published; a failure deletes it. A
    previous object under the same name (a retried task's) is deleted after the new one is named.

    :param scope: the XCom it is pushed as (its object's name is made from it).
    :raises VineyardOutOfMemoryError: the payload does not fit (checked before any allocation).
    :raises UnsupportedXComValueError: Vineyard cannot hold the value.
    :raises VineyardReadBackError: what Vineyard gives back differs from what was put.
    :raises VineyardConnectionError: the connection broke or timed out (VineyardTimeoutError).
    """
    action = f"storing XCom {scope.key!r} of task {scope.task_id!r} (DAG run {scope.run_id!r})"
    with calls.guarded(client, action):
        return _put(client, encoded, original, scope)


def _put(client: Client, encoded: codec.Encoded, original: Any, scope: XComScope) -> VineyardReference:
    import vineyard

    name = scope.object_name(config.get("name_prefix"))
    try:
        previous = client.get_name(name)
    except vineyard.ObjectNotExistsException:
        previous = None
    needed = admission.payload_nbytes(encoded.payload)

    def admit(pending: Any, at_most: int) -> None:  # under the in-flight lock: before any allocation
        admission.check_room(client, needed, what=encoded.type, scope=scope, pending=pending, at_most=at_most)

    # Everything the put creates is recorded; on any failure below it is deleted again.
    with inflight.tracked(client, needed, name, admit, reconnect=lambda: _fresh(client)) as put:
        try:
            # Transient first, persisted below: when the persist cannot reach etcd, the id is
            # known and the object can be deleted instead of staying behind unnamed.
            object_id = _put_payload(client, encoded.payload, needed)
        except vineyard.NotEnoughMemoryException as exc:
            raise admission.out_of_memory(client, needed, what=encoded.type, scope=scope, cause=exc) from exc
        except Exception as exc:
            if calls.is_connection_failure(exc):
                raise  # not the value's fault: guarded() names it
            raise errors.UnsupportedXComValueError(
                f"XCom {scope.key!r} of task {scope.task_id!r}: Vineyard cannot store this "
                f"{encoded.type} ({type(exc).__name__}: {exc}). Convert the columns it cannot hold (e.g. "
                "extension types to plain numeric or str columns) before returning it.",
                xcom=scope.describe(),
            ) from exc
        put.stored(object_id)
        ref = _checked_reference(client, object_id, encoded, original, scope, name)
        client.put_name(object_id, name)
    if previous is not None and previous != object_id:
        # The retried/cleared task's earlier object; its name now points at the new one and stays.
        delete_named(client, name, previous)
    log.info("XCom %r stored in Vineyard as %s (%s, %d bytes)", scope.key, name, ref.object_id, ref.bytes)
    return ref


def _checked_reference(
    client: Client,
    object_id: Any,
    encoded: codec.Encoded,
    original: Any,
    scope: XComScope,
    name: str,
) -> VineyardReference:
    """Persist the put object, read it back, check it and return its reference (not yet named).

    :raises VineyardReadBackError: pickled by Vineyard, or what it gives back differs.
    """
    client.persist(object_id)  # names and metadata visible to every vineyardd on its etcd
    meta = client.get_meta(object_id)
    ref = VineyardReference(
        object_id=repr(object_id),
        name=name,
        type=encoded.type,
        encoding=encoded.encoding,
        typename=meta.typename,
        bytes=int(meta.memory_usage),
        map_index=scope.index,
        host=_hostname(client),
        socket=str(client.ipc_socket) if client.is_ipc else "",
        instance_id=int(client.instance_id),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        shape=encoded.shape,
        dtype=encoded.dtype,
        columns=encoded.columns,
        extra=encoded.extra,
        expires=_expiry(),
        key=scope.key,
        task_id=scope.task_id,
        dag_id=scope.dag_id,
        run_id=scope.run_id,
    )
    if meta.typename == "vineyard::PickleBuffer":
        raise errors.VineyardReadBackError(
            f"XCom {scope.key!r} of task {scope.task_id!r}: Vineyard fell back to pickling the "
            f"{encoded.type}; such objects cannot be read back reliably by other processes. "
            "Nothing was recorded."
        )
    try:
        stored = _fetch(client, object_id, meta.typename)
    except Exception as exc:
        raise errors.VineyardReadBackError(
            f"XCom {scope.key!r} of task {scope.task_id!r}: Vineyard stored the {encoded.type} "
            f"but cannot read it back ({type(exc).__name__}: {str(exc)[:300]}). Nothing was recorded. "
            "Convert the columns Vineyard cannot hold to plain numeric or str columns first."
        ) from exc
    codec.check_read_back(encoded, original, stored, ref)
    del stored  # drop the zero-copy views before the name is published
    return ref


def _put_payload(client: Client, payload: Any, nbytes: int) -> Any:
    """Put an encoded payload; return the new (transient) object's id. ``nbytes``: what admission
    counted (:func:`.lifecycle.admission.payload_nbytes`: for a table its exact stream size).

    Arrow tables go as one IPC-stream blob (:mod:`.client.arrow_stream`: 3 round trips, where
    Vineyard's Table builder makes one per buffer and array); arrays through Vineyard's builders.
    """
    import pyarrow as pa

    if isinstance(payload, pa.Table):
        return arrow_stream.put_table(client, payload, nbytes)
    return client.put(payload)


def _fetch(client: Client, object_id: Any, typename: str) -> Any:
    """What ``object_id`` holds: a ``pyarrow.Table`` for an IPC-stream object, else Vineyard's
    resolved value (ndarray, or the Table of references written through Vineyard's builders)."""
    if typename == arrow_stream.TYPENAME:
        return arrow_stream.read_table(client, object_id)
    return client.get(object_id)


def _expiry() -> str:
    """When this push's objects are released, in words, from ``[fluid] keep_for`` and
    ``keep_failed_for`` (:func:`fluid_airflow.config.retention`)."""

    def when(seconds: int) -> str:
        if seconds == 0:
            return "at run end"
        return f"{seconds} s after run end" if seconds > 0 else "never (release task or gc)"

    ok, failed = config.retention("success"), config.retention("failed")
    return when(ok) if ok == failed else f"{when(ok)}; if the run fails, {when(failed)}"


def _fresh(client: Client) -> Any:
    """A new connection to ``client``'s vineyardd: after a timed-out call vineyard's client is
    disconnected, and deleting a failed put's objects needs one (measured: with etcd down a
    transient object still deletes at once)."""
    from fluid_airflow.hooks.vineyard import VineyardHook

    if not client.is_ipc:
        raise errors.VineyardConnectionError("no IPC socket to reconnect to")
    return VineyardHook(ipc_socket=str(client.ipc_socket)).get_conn()


def _hostname(client: Client) -> str:
    try:
        return str(client.meta[client.instance_id]["hostname"])
    except Exception:
        return socket.gethostname()


def resolve(client: Client, ref: VineyardReference) -> Any:
    """Fetch the object behind ``ref`` and rebuild the producer's value (zero-copy views).

    :raises VineyardObjectLostError: no object with the reference's id, its type changed, or the
        vineyardd instance that held its payload is gone.
    :raises VineyardConnectionError: the connection broke or timed out (VineyardTimeoutError).
    """
    action = f"reading XCom {ref.key!r} of task {ref.producer!r} (object {ref.name})"
    with calls.guarded(client, action):
        return _get(client, ref)


def _get(client: Client, ref: VineyardReference) -> Any:
    import vineyard

    object_id = vineyard.ObjectID(ref.object_id)
    try:
        meta = client.get_meta(object_id)
    except vineyard.ObjectNotExistsException as exc:
        raise _lost(ref, "no such object in vineyardd") from exc
    if meta.typename != ref.typename:
        raise _lost(ref, f"the id now holds a {meta.typename}, not the {ref.typename} stored")
    holder = int(meta.instance_id)
    gone = _holder_gone(client, holder)
    if gone:
        migration.count("failed", ref, f": {gone}")
        raise _lost(ref, gone)
    if holder == int(client.instance_id):
        migration.count("local", ref)
    else:
        client, object_id = _migrate(client, ref, holder)
    stored = _fetch(client, object_id, meta.typename)
    if ref.encoding == "json":
        return BaseXCom.deserialize_value(_Result(json.loads(codec.decode(stored, ref))))
    return codec.decode(stored, ref)


def _migrate(client: Client, ref: VineyardReference, holder: int) -> tuple[Any, Any]:
    """``(reader, object_id)`` of a local copy of ``ref``'s object, which another instance holds.

    The holder's RPC endpoint is probed first: our vineyardd would otherwise wait for a dead
    holder until our client's timeout, and report it as a hang of its own.
    """
    endpoint = str(client.meta.get(holder, {}).get("rpc_endpoint", "?"))
    try:
        calls.probe("rpc", endpoint, float(client.timeout_seconds))
        return migration.local_object(client, ref, holder)
    except Exception as exc:
        if calls.is_connection_failure(exc) and not client.connected:
            raise  # our own connection broke: guarded() names it
        migration.count("failed", ref, f": instance {holder} at {endpoint}: {exc}")
        raise _lost(
            ref,
            f"its payload is on vineyardd instance {holder} (RPC {endpoint}), which could not hand it "
            f"over ({type(exc).__name__}: {str(exc)[:200]}); that instance died or is unreachable",
        ) from exc


def _holder_gone(client: Client, holder: int) -> str | None:
    """Why the vineyardd instance ``holder`` cannot have the payload, or None if it may.

    With etcd metadata an object's entry outlives its vineyardd: a restarted vineyardd joins as a
    new, higher instance id, and etcd keeps the old instance's record (same IPC socket, same
    host), so the metadata is found while the payload is nowhere (docs/design.md §9, §11).
    """
    if holder == int(client.instance_id):
        return None
    cluster = client.meta
    if holder not in cluster:
        return f"its payload was held by vineyardd instance {holder}, which has left the cluster"
    old = cluster[holder]
    for instance, entry in cluster.items():
        same_place = (entry.get("ipc_socket"), entry.get("hostname")) == (
            old.get("ipc_socket"),
            old.get("hostname"),
        )
        if int(instance) > holder and same_place:
            return (
                f"its payload was held by vineyardd instance {holder}, an earlier run of the vineyardd "
                f"now serving {old.get('ipc_socket')} on {old.get('hostname')} as instance {instance} "
                "(it restarted)"
            )
    return None


def _lost(ref: VineyardReference, cause: str) -> errors.VineyardObjectLostError:
    # The REST body spells out dry_run and only_failed: their defaults (True, True) would only list, or
    # clear just the failed consumer (airflow-core 3.3.2 api_fastapi/core_api/datamodels/task_instances.py
    # ClearTaskInstancesBody).
    return errors.VineyardObjectLostError(
        f"XCom {ref.key!r} of task {ref.producer!r} in DAG run {ref.run_id!r} of DAG {ref.dag_id!r} "
        f"refers to Vineyard object {ref.object_id} ({ref.name}), which is gone: {cause}. Vineyard "
        "objects are lost when vineyardd restarts or when the run's objects were released. Fix: clear "
        f"task {ref.task_id!r} in DAG run {ref.run_id!r} so it recomputes the value (Airflow UI: open "
        "the run, select the task, Clear with downstream; or REST: POST "
        f"/api/v2/dags/{ref.dag_id}/clearTaskInstances with "
        f'{{"dag_run_id": "{ref.run_id}", "task_ids": ["{ref.task_id}"], "include_downstream": true, '
        '"only_failed": false, "dry_run": false}). '
        "If that task's own inputs were lost too (after a vineyardd restart, every object is), clear "
        "from the first task of the run instead."
    )


def release(client: Client, ref: VineyardReference) -> bool:
    """Delete the object behind ``ref``, its name and its migrated copies.

    Only the object the name points at is deleted: when the name is gone or points at another
    object, ``ref.object_id`` is not (or no longer) this name's object, and is left alone (a
    reference can be copied into another XCom row; its id must not be trusted on its own).

    :returns: True when an object was deleted, False when there was none to delete.
    :raises VineyardConnectionError: the connection broke, timed out, or etcd is unreachable.
    """
    import vineyard

    object_id = vineyard.ObjectID(ref.object_id)
    with calls.guarded(client, f"releasing object {ref.name} ({ref.object_id})"):
        migration.release_copies(client, ref)
        try:
            named = client.get_name(ref.name)
        except vineyard.ObjectNotExistsException:
            return False  # released already, or vineyardd restarted
        if named != object_id:
            log.warning(
                "Not deleting Vineyard object %s: its name %s now points at %r (a re-pushed XCom); the "
                "reference is stale",
                ref.object_id,
                ref.name,
                named,
            )
            return False
        existed = _exists(client, object_id)
        delete_named(client, ref.name, object_id)
        return existed


def _exists(client: Client, object_id: Any) -> bool:
    import vineyard

    try:
        client.get_meta(object_id)
    except vineyard.ObjectNotExistsException:
        return False
    return True
