"""VineyardXComBackend: Airflow 3 XCom backend that keeps large values in Vineyard.

Enable with one config line::

    AIRFLOW__CORE__XCOM_BACKEND=fluid_airflow.vineyard.xcom.VineyardXComBackend

What goes where (``serialize_value``):
- numpy arrays and pandas DataFrames whose data is below ``[fluid] inline_payload_floor`` bytes
  and that round-trip exactly: inline in the DB, with a one-line ``summary`` (:mod:`.inline`);
- other numpy arrays, pandas DataFrames/Series, pyarrow Tables/RecordBatches/Arrays/ChunkedArrays:
  put into Vineyard under a run-scoped name; the DB row is a :class:`VineyardReference` dict;
- dicts, lists and tuples holding such values: a tree row (:mod:`.tree`) starting with a
  one-line ``summary``, each leaf inline or in Vineyard by the rules above;
- other values Airflow can serialise: inline in the DB when their JSON is smaller than
  ``[fluid] inline_threshold`` bytes, else into Vineyard as JSON text;
- anything else: :class:`errors.UnsupportedXComValueError` in the producer.

Airflow 3 runs backend methods only in task processes (docs/design.md §12, §13): ``set`` ->
``serialize_value``; ``get_one``/``get_all``/lazy mapped sequences -> ``deserialize_value``;
``delete`` (retry/clear of a task, ``TIRunContext.xcom_keys_to_clear``) -> ``purge``. Source:
``airflow/sdk/bases/xcom.py`` and ``airflow/sdk/execution_time/lazy_sequence.py`` (task-sdk 1.3.2).
"""

from __future__ import annotations

import json
import logging
from collections import namedtuple
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.xcom import BaseXCom

from fluid_airflow import config

# Module import, not names: Airflow may load this module while fluid_airflow.exceptions is
# still initialising (it imports airflow, whose config loads the XCom backend).
from fluid_airflow import exceptions as errors

# The module, not the name: Airflow resolves this backend from its config while the hook module
# may still be initialising (it imports airflow.sdk), and a name import would then fail.
from fluid_airflow.hooks import vineyard as vineyard_hooks
from fluid_airflow.vineyard import store
from fluid_airflow.vineyard.data import codec, inline, naming, outputs, tree
from fluid_airflow.vineyard.data.reference import VineyardReference, is_reference
from fluid_airflow.vineyard.lifecycle import migration

if TYPE_CHECKING:
    from vineyard import Client

if TYPE_CHECKING:
    from fluid_airflow.hooks.vineyard import VineyardHook

log = logging.getLogger(__name__)

_Result = namedtuple("_Result", ["value"])

# Set by @task.fluid while Airflow resolves a task's arguments: references then stay references
# (the payload must not be loaded in the Airflow worker), and by the pod/subprocess runner to
# store and load through the Dataset's vineyardd instead of the configured one.
_resolve_references: ContextVar[bool] = ContextVar("fluid_airflow_resolve_references", default=True)
_client_override: ContextVar[Any] = ContextVar("fluid_airflow_vineyard_client", default=None)
_purging: ContextVar[naming.XComScope | None] = ContextVar("fluid_airflow_purging", default=None)
resolved_in_process = 0  # payloads this process loaded through deserialize_value (for tests)


@contextmanager
def references_only() -> Iterator[None]:
    """Within this block ``deserialize_value`` returns references (dicts) instead of payloads."""
    token = _resolve_references.set(False)
    try:
        yield
    finally:
        _resolve_references.reset(token)


@contextmanager
def use_client(client: Client) -> Iterator[None]:
    """Within this block the backend stores and loads through ``client`` (a vineyard Client)."""
    token = _client_override.set(client)
    try:
        yield
    finally:
        _client_override.reset(token)


def _client(ref: VineyardReference | None = None, *, deleting: bool = False) -> Any:
    """The client to use; for reading or deleting ``ref``, the vineyardd that holds it.

    ``deleting``: when ``ref`` names a socket this process cannot reach (a pod's, e.g.
    ``/var/run/vineyard/vineyard-worker.sock``) and the configured vineyardd is reached over RPC (a
    Dataset's, as the scheduler and API server reach it), that client is used: names live in the
    cluster's shared metadata, so it finds the object and its copies when its cluster holds them,
    and deletes go through their holders (:mod:`.lifecycle.delete`).

    :raises VineyardConnectionError: ``ref`` lives in another vineyardd (a Dataset's) whose
        socket this process cannot reach, and (for a delete) no RPC client of it is configured.
    """
    override = _client_override.get()
    if override is not None:
        return override
    hook = backend_hook()
    if ref is not None and ref.socket:
        kind, where = hook.endpoint()
        if (kind, where) != ("ipc", ref.socket):
            own = _own_cluster_client(hook, ref)
            if own is not None:  # another instance of our cluster: migrate, don't bypass
                return own
            if not Path(ref.socket).exists():
                if deleting and kind == "rpc":
                    return hook.get_conn()
                fix = (
                    "To release it from here, point the vineyard connection at that Dataset over RPC (extra "
                    '{"dataset": "<namespace>/<name>"}: docs/deploy.md).'
                    if deleting
                    else "Read it in a @task.fluid task of that Dataset instead."
                )
                raise errors.VineyardConnectionError(
                    f"XCom {ref.key!r} of task {ref.producer!r} (DAG run {ref.run_id!r}) lives in the "
                    f"vineyardd at {ref.socket} (a Dataset's cache), which this process cannot reach (it "
                    f"uses {kind} {where}). {fix}"
                )
            return vineyard_hooks.VineyardHook(ipc_socket=ref.socket).get_conn()
    return hook.get_conn()


def _own_cluster_client(hook: VineyardHook, ref: VineyardReference) -> Any | None:
    """The configured client when ``ref``'s instance is in its cluster (shared etcd), else None."""
    try:
        client = hook.get_conn()
    except errors.VineyardConnectionError:
        return None  # e.g. only a Dataset's vineyardd runs here
    return client if migration.same_cluster(client, ref) else None


def backend_hook(timeout: float | None = None) -> VineyardHook:
    """The hook the backend uses: ``[fluid] vineyard_conn_id`` if set, else ``vineyard_socket``."""
    conn_id = config.get("vineyard_conn_id")
    if conn_id:
        return vineyard_hooks.VineyardHook(conn_id, timeout=timeout)
    return vineyard_hooks.VineyardHook(ipc_socket=config.vineyard_socket(), timeout=timeout)


class VineyardXComBackend(BaseXCom):
    """XCom backend storing arrays, DataFrames and Arrow data in Vineyard shared memory."""

    @staticmethod
    def serialize_value(
        value: Any,
        *,
        key: str | None = None,
        task_id: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        map_index: int | None = None,
    ) -> Any:
        """Store ``value`` and return what goes into Airflow's DB (JSON-able).

        Vineyard values are put, read back and checked before the name is set, so a failure
        leaves nothing behind and the producer task fails at push time. A re-push of the same
        XCom (retry, clear) repoints the name and deletes the earlier object.

        :raises UnsupportedXComValueError: neither Vineyard nor Airflow's serde can hold the value.
        :raises VineyardReadBackError: Vineyard cannot give the value back intact.
        :raises VineyardConnectionError: vineyardd does not answer.
        """
        if tree.is_backend_row(value):
            return value  # already in our DB form (e.g. returned by a pod): keep it as is
        # Empty when pushed from outside a running task: refused before anything is stored (_require_scope).
        scope = naming.XComScope(dag_id or "", run_id or "", task_id or "", key or "", map_index)
        # A bad setting fails every push, not some.
        for option in ("inline_threshold", "inline_payload_floor", "keep_for"):
            config.get_int(option)
        try:
            return _serialize(value, scope)
        except errors.UnsupportedXComValueError as exc:
            if exc.xcom:
                raise
            # Raised by codec/tree, which do not know the task: name it here.
            raise errors.UnsupportedXComValueError(
                f"{scope.describe()}: {exc}", xcom=scope.describe()
            ) from exc

    @staticmethod
    def deserialize_value(result: Any) -> Any:
        """Return the value of an XCom row; references are resolved from Vineyard.

        ``result`` is an ``XComResult`` or any object with ``.value`` (``get_all`` and lazy
        mapped sequences pass a wrapper). Arrays and native DataFrames read from Vineyard come
        back as read-only zero-copy views (``.copy()`` before mutating); inline ones are new
        writable store. Within :func:`references_only` every row of ours stays a dict.

        :raises VineyardObjectLostError: the referenced object is gone or was replaced.
        """
        if tree.is_backend_row(result.value) and not _resolve_references.get():
            return result.value
        if is_reference(result.value):
            return resolve(VineyardReference.from_json(result.value))
        if inline.is_inline(result.value):
            return inline.decode(result.value)
        if tree.is_tree(result.value):
            return tree.from_tree(
                result.value,
                lambda ref: resolve(VineyardReference.from_json(ref)),
                lambda plain: BaseXCom.deserialize_value(_Result(plain)),
            )
        return BaseXCom.deserialize_value(result)

    @classmethod
    def delete(cls, key: str, task_id: str, dag_id: str, run_id: str, map_index: int | None = None) -> None:
        """As Airflow's (the task runner calls it for each XCom of a retried or cleared task), with the
        XCom's identity kept for :meth:`purge`: the row Airflow hands purge there carries only the key and
        the value (task-sdk 1.3.2 ``bases/xcom.py`` ``BaseXCom.delete`` -> ``_get_xcom_db_ref`` ->
        ``XComResult``), and purge deletes an object only when its name belongs to that very XCom.
        """
        token = _purging.set(naming.XComScope(dag_id, run_id, task_id, key, map_index))
        try:
            super().delete(key=key, task_id=task_id, dag_id=dag_id, run_id=run_id, map_index=map_index)
        finally:
            _purging.reset(token)

    @classmethod
    def purge(cls, xcom: Any, *args: Any) -> None:
        """Delete the Vineyard object behind an XCom row Airflow is deleting (retry/clear).

        Never raises: a failure is logged as a warning, since the next push to the same name
        deletes the earlier object anyway.
        """
        value = getattr(xcom, "value", None)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return
        refs = [VineyardReference.from_json(r) for r in tree.references_in(value)]
        for ref in refs:
            owner = _row_owns(xcom, ref)
            if owner is not True:
                if owner:  # multiple_outputs leaves belong to their own keys: no warning
                    log.warning(owner)
                continue
            try:
                release(ref)
            except Exception as exc:
                log.warning("Could not release Vineyard object %s (%s): %s", ref.object_id, ref.name, exc)


def _row_owns(xcom: Any, ref: VineyardReference) -> bool | str:
    """True when ``ref`` names an object of this XCom row's own scope, else why not ("" when
    it is a sibling key of the same task instance, which is not worth a warning).

    Decided from the object *name* only (DAG, run, task, map index, key): the other fields of a
    reference are just what the row says, and a row can be edited (REST PATCH) to hold another
    DAG's reference, whose object purge must not delete.
    """
    deleting = _purging.get()  # the XCom BaseXCom.delete is deleting, whose row carries no identity
    row = {
        field: getattr(xcom, field, None) or (getattr(deleting, field) if deleting else None)
        for field in ("dag_id", "run_id", "task_id")
    }
    index = getattr(xcom, "map_index", None)
    row["map_index"] = deleting.index if index is None and deleting else (-1 if index is None else index)
    key = str(getattr(xcom, "key", ""))
    parts: Mapping[str, object]
    try:
        parts = naming.split_xcom_object_name(ref.name)
    except ValueError:
        parts = {}
    same_instance = parts.get("prefix") == config.get("name_prefix") and all(
        parts.get(k) == (-1 if k == "map_index" and v is None else v) for k, v in row.items()
    )
    if same_instance and (parts["key"] == key or str(parts["key"]).startswith(f"{key}.")):
        return True
    if same_instance:
        return ""
    return (
        f"Not deleting Vineyard object {ref.object_id} ({ref.name}) while purging XCom {key!r} of task "
        f"{row['task_id']!r} (DAG {row['dag_id']!r}, run {row['run_id']!r}, map index {row['map_index']}): "
        "the object's name belongs to another XCom, so the row was edited to hold a foreign reference. "
        "Its own XCom still owns it; release it from there (or with fluid-airflow gc)."
    )


def _serialize(value: Any, scope: naming.XComScope) -> Any:
    if codec.is_vineyard_type(value):
        row = inline.encode(value, config.get_int("inline_payload_floor"))
        if row is not None:
            outputs.remember(scope, value, None)  # nothing stored: nothing to reuse
            return row
        _require_scope(scope, type(value))
        ref = _store(codec.encode(value), value, scope).to_json()
        outputs.remember(scope, value, ref)
        return ref
    if tree.contains_vineyard(value):
        _require_scope(scope, type(value))
        return _store_tree(value, scope)
    serialized = _serde(value, scope)
    text = _json_text(serialized)
    if len(text.encode("utf-8")) < config.get_int("inline_threshold"):
        outputs.remember(scope, value, None)
        return serialized
    _require_scope(scope, type(value))
    ref = _store(codec.encode_json(text), text, scope).to_json()
    outputs.remember(scope, value, None)  # JSON text is not reused: it is not the object
    return ref


def _json_text(serialized: Any) -> str:
    """JSON of a serialised value, as strict as the DB row will be (no NaN or infinity)."""
    try:
        return json.dumps(serialized, allow_nan=False)
    except ValueError as exc:
        raise errors.UnsupportedXComValueError(
            f"the value holds NaN or infinity outside an array ({exc}); JSON cannot carry them. Put such "
            "numbers in a numpy array or DataFrame, or replace them (e.g. with None)."
        ) from exc


def _require_scope(scope: naming.XComScope, kind: type) -> None:
    missing = scope.missing()
    if missing:
        raise errors.FluidAirflowError(
            f"Cannot store a {kind.__name__} in Vineyard without {', '.join(missing)}: the object name is "
            "scoped by DAG run, task and key. Push XComs from a running task (return or ti.xcom_push)."
        )


def _store_tree(value: Any, scope: naming.XComScope) -> dict[str, Any]:
    siblings = outputs.multiple_outputs_pushes(value, scope)
    floor = config.get_int("inline_payload_floor")

    def store(leaf: Any, path: list[str]) -> dict[str, Any]:
        if len(path) == 1 and path[0] in siblings and siblings[path[0]][0] is leaf:
            return VineyardReference.from_json(siblings[path[0]][1]).to_json(compact=True)
        leaf_scope = scope.with_key(".".join([scope.key, *path]))
        return _store(codec.encode(leaf), leaf, leaf_scope).to_json(compact=True)

    stored: list[dict[str, Any]] = []

    def store_new(leaf: Any, path: list[str]) -> dict[str, Any]:
        row = inline.encode(leaf, floor)
        if row is not None:
            return {"inline": row}
        ref = store(leaf, path)
        stored.append(ref)
        return {"ref": ref}

    try:
        result = tree.to_tree(value, store_new, lambda plain: _serde(plain, scope))
        _json_text(result)
        return result
    except BaseException:
        owned = [VineyardReference.from_json(r) for r in stored]
        for ref in owned:
            if ref.key.startswith(f"{scope.key}."):  # roll back this push's own leaves
                release(ref)
        raise
    finally:
        if scope.key == BaseXCom.XCOM_RETURN_KEY:
            outputs.forget()  # the last push of a task instance


def _serde(value: Any, scope: naming.XComScope) -> Any:
    try:
        return BaseXCom.serialize_value(value)
    except Exception as exc:
        raise errors.UnsupportedXComValueError(
            f"XCom {scope.key!r} of task {scope.task_id!r}: a {type(value).__module__}."
            f"{type(value).__qualname__} can go neither to Vineyard (numpy arrays, pandas "
            "DataFrames/Series, pyarrow Tables/RecordBatches/Arrays) nor through Airflow's JSON "
            f"serialisation ({type(exc).__name__}: {exc}). Return one of those types, or JSON-able "
            "data (dict, list, str, numbers).",
            xcom=scope.describe(),
        ) from exc


def _store(encoded: codec.Encoded, original: Any, scope: naming.XComScope) -> VineyardReference:
    return store.put(_client(), encoded, original, scope)


def resolve(ref: VineyardReference) -> Any:
    """Fetch the object behind ``ref`` from the vineyardd that holds it (see :func:`store.resolve`)."""
    global resolved_in_process
    client = _client(ref)
    resolved_in_process += 1
    return store.resolve(client, ref)


def release(ref: VineyardReference) -> bool:
    """Delete the object behind ``ref`` and its name (see :func:`store.release`)."""
    return store.release(_client(ref, deleting=True), ref)
