"""Reads across vineyardd instances: migrate an object to the reader's instance, record the copy.

In a Vineyard cluster (one vineyardd per cache node, metadata shared in etcd), a persisted
object's metadata and name are visible on every instance, but its payload stays on the instance
that holds it (docs/design.md §9). ``Client.migrate(id)`` makes the reader's vineyardd pull the
payload over RPC from the holder and store it locally under a new id (``VineyardServer::MigrateObject``,
v6d ``src/server/server/vineyard_server.cc`` @ v0.24.2); nothing upstream tracks that copy
(docs/design.md §10; v6d's own Airflow-2 backend, ``python/vineyard/contrib/airflow/xcom/backend.py``,
leaves it behind). Here each copy is
persisted and named (:func:`~fluid_airflow.vineyard.data.naming.copy_object_name`), so the next reader
on that instance reuses it zero-copy, and releasing the run, purging the XCom or ``gc`` frees it
with its original.

Every read is counted as one handoff kind: ``local`` (zero-copy, the reader's instance holds
the object), ``local_copy`` (zero-copy from an earlier migrated copy), ``migrated`` (copied over
RPC now), ``rpc`` (read over RPC into private memory, when migration cannot be used) or
``failed``. The counts are logged, kept in :data:`handoffs` (per process) and sent to
Airflow's metrics as ``fluid_airflow.handoff.<kind>`` (statsd/OpenTelemetry when enabled).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from airflow.sdk.observability.stats import Stats  # at import: not inside a measured read

from fluid_airflow.vineyard.client.calls import LIST_LIMIT
from fluid_airflow.vineyard.data.naming import copies_pattern, copy_object_name
from fluid_airflow.vineyard.data.reference import VineyardReference
from fluid_airflow.vineyard.lifecycle.delete import delete_named, holder_client

if TYPE_CHECKING:
    from vineyard import Client

log = logging.getLogger(__name__)

handoffs: Counter[str] = Counter()  # reads by kind in this process


def held_bytes(meta: Any) -> int:
    """Shared-memory bytes of the object ``meta`` describes, asked from any instance.

    ``ObjectMeta.memory_usage`` counts only blobs the asking instance holds (0 for another
    instance's object: ``ObjectMeta::MemoryUsage``, v6d ``src/client/ds/object_meta.cc`` @ v0.24.2,
    docs/design.md §9); ``nbytes`` is then the best figure.
    """
    if meta.islocal:
        return int(meta.memory_usage)
    return _blob_bytes(meta)


def _blob_bytes(meta: Any) -> int:
    """``nbytes`` of ``meta``, else the sum of its members' (frames and tables carry it on their
    columns, not on themselves; a remote blob's own ``length`` reads 0)."""
    import vineyard

    own = int(meta.nbytes or 0)
    if own:
        return own
    members = [meta[key] for key in meta if isinstance(meta[key], vineyard.ObjectMeta)]
    return sum(_blob_bytes(m) for m in members)


def count(kind: str, ref: VineyardReference, detail: str = "") -> None:
    """Record one handoff of ``kind`` (local, local_copy, migrated, failed) for ``ref``."""
    handoffs[kind] += 1
    log.info("XCom %r (%s, %d bytes): %s read%s", ref.key, ref.name, ref.bytes, kind, detail)
    try:
        Stats.incr(f"fluid_airflow.handoff.{kind}")
    except Exception:  # metrics are best effort; the read itself must not fail on them
        log.debug("Airflow metrics unavailable", exc_info=True)


def same_cluster(client: Client, ref: VineyardReference) -> bool:
    """True when the vineyardd that stored ``ref`` is a member of ``client``'s cluster (shared etcd).

    The cluster's instance table (``client.meta``) then lists an instance with the IPC socket the
    reference recorded. (Compact references in containers carry no instance id; the holder is
    read from the object's metadata when it is fetched.)
    """
    try:
        return any(entry.get("ipc_socket") == ref.socket for entry in client.meta.values())
    except Exception:
        return False


def local_object(client: Client, ref: VineyardReference, holder: int) -> tuple[Any, Any]:
    """Where to read ``ref``'s object from: a copy on ``client``'s own instance, migrated if needed.

    :param holder: the instance id that holds the original (from its metadata).
    :returns: ``(reader, object_id)``: normally ``client`` and the copy's id, read zero-copy.
        When the reader's vineyardd hands back a copy that no longer exists (vineyard 0.24.2
        remembers a migration even after the copy was deleted through another instance, and
        keeps returning the dead id: docs/design.md §10), an RPC client of the holder and the original's id: a
        private copy, counted as ``rpc``.
    :raises Exception: vineyard's own error when the migration fails (the caller names it).
    """
    import vineyard

    own = int(client.instance_id)
    for object_id in client.list_names(
        copies_pattern(ref.name, ref.object_id, own), limit=LIST_LIMIT
    ).values():
        try:
            if int(client.get_meta(object_id).instance_id) == own:
                count("local_copy", ref, f" from copy {object_id!r} on instance {own}")
                return client, object_id
        except vineyard.ObjectNotExistsException:
            continue  # a copy deleted meanwhile; its name goes with the run
    started = time.monotonic()
    original = vineyard.ObjectID(ref.object_id)
    copy = client.migrate(original)
    try:
        client.persist(copy)  # so other instances (release, gc) see and can delete it
    except vineyard.MetaTreeSubtreeNotExistsException:
        endpoint = str(client.meta[holder]["rpc_endpoint"])
        count(
            "rpc", ref, f": instance {own} returned a deleted earlier copy; reading over RPC from {endpoint}"
        )
        return holder_client(endpoint, float(client.timeout_seconds)), original
    try:
        client.put_name(copy, copy_object_name(ref.name, ref.object_id, own, secrets.token_hex(4)))
    except BaseException:
        client.delete(copy)
        raise
    seconds = time.monotonic() - started
    count("migrated", ref, f" from instance {holder} to {own} in {seconds:.3f} s")
    return client, copy


def release_copies(client: Client, ref: VineyardReference) -> int:
    """Delete every recorded copy of ``ref``'s object, each through its holder; returns how many."""
    pattern = copies_pattern(ref.name, ref.object_id)
    copies = client.list_names(pattern, limit=LIST_LIMIT).items()
    return sum(delete_named(client, name, object_id) for name, object_id in copies)
