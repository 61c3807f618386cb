"""Reclaiming: free what no name reaches in a vineyardd, while no put is in flight there.

:func:`reclaim` (``fluid-airflow gc``, and admission when the store is short) deletes the objects
recorded by journals whose process is gone (unsealed blobs are listed nowhere else: v6d #2072), and
every object of this vineyardd that no name reaches (sealed leftovers, half-built values). A put in
flight holds its journal (:mod:`.journal`), so it is never touched. ``[fluid] reclaim_unnamed =
False`` turns the second part off for a vineyardd shared with clients that keep unnamed objects on
purpose. :func:`delete_all` is also how a failed put rolls itself back (:mod:`.inflight`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fluid_airflow.vineyard.client.calls import LIST_LIMIT, connected_instance
from fluid_airflow.vineyard.lifecycle import blob_ids, journal

if TYPE_CHECKING:
    from vineyard import Client

log = logging.getLogger(__name__)

EMPTY_BLOB = "o8000000000000000"  # vineyardd's shared empty blob: never deleted


def delete_all(client: Client, metas: list[Any], blobs: list[Any], guessed: Sequence[Any] = ()) -> bool:
    """Delete metadata objects without their members (a member may be another object's blob,
    reused by vineyard's ``find_shared_memory``), then blobs; the caller passes only ids no
    name reaches.

    ``force``: vineyardd otherwise silently keeps an object that a parent not yet deleted still
    refers to (v6d ``src/server/services/meta_service.cc`` ``RequestToDelete`` @ v0.24.2). An id
    already gone is a no-op.
    """
    try:
        for object_id in metas:
            client.delete(object_id, force=True, deep=False)
        for object_id in blobs:
            if repr(object_id) != EMPTY_BLOB:
                client.delete(object_id, force=True)
        for start in range(0, len(guessed), blob_ids.BATCH):  # unknown ids are no-ops
            client.delete(list(guessed[start : start + blob_ids.BATCH]), force=True)
    except Exception as exc:
        log.warning("Could not delete what a failed put created (%s: %s)", type(exc).__name__, exc)
        return False
    return True


@dataclass
class Reclaimed:
    """What :func:`reclaim` freed (or, for a dry run, would free) in one vineyardd."""

    objects: int = 0
    bytes: int = 0
    journals: int = 0
    in_flight: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "objects": self.objects,
            "bytes": self.bytes,
            "journals": self.journals,
            "in_flight": self.in_flight,
        }


def reclaim(
    client: Client, *, dry_run: bool = False, unnamed: bool = True, locked: bool = False
) -> Reclaimed:
    """Free what no name reaches in ``client``'s vineyardd, unless a put is in flight there.

    :param unnamed: also delete sealed objects of this instance that no name reaches (not only
        what dead puts' journals recorded).
    :param locked: the caller holds the journal folder's lock already (admission).
    :returns: objects and bytes freed (a dry run: found), dead journals handled, and how many
        puts were in flight (then nothing is touched).
    """
    if not client.is_ipc:
        # Puts in flight are journalled next to the IPC socket (:mod:`.journal`), which an RPC client
        # cannot see: any unnamed object might be a put in progress, so nothing is touched.
        return Reclaimed()
    folder = journal.journal_dir(client)
    lock = journal.locked(folder) if folder is not None and not locked else contextlib.nullcontext()
    with lock:
        now = time.time()
        found = journal.journals(folder) if folder is not None else []
        live = [j for j in found if j.alive(now)]
        if live:
            return Reclaimed(in_flight=len(live))
        reachable = reachable_ids(client)
        own = int(client.instance_id)
        listed = {
            repr(m.id): m for m in client.list_metadatas("*", limit=LIST_LIMIT) if int(m.instance_id) == own
        }
        metas: dict[str, int] = {}
        blobs: dict[str, int] = {}
        unknown: list[int] = []
        for dead in found:  # dead: their process is gone
            blobs.update({b: n for b, n in dead.blobs.items() if b not in reachable})
            metas.update({m: 0 for m in dead.metas if m not in reachable})
            if dead.asking is not None:  # ids that exist are listed: never a candidate
                guesses = blob_ids.candidates(*dead.asking)
                unknown.extend(i for i in guesses if f"o{i:x}" not in listed)
        if unnamed:
            for object_id, meta in listed.items():
                if object_id not in reachable:
                    target = blobs if meta.typename == "vineyard::Blob" else metas
                    target[object_id] = int(meta.nbytes) if target is blobs else 0
        result = Reclaimed(objects=len(metas) + len(blobs), bytes=sum(blobs.values()), journals=len(found))
        if dry_run or (not result.objects and not found):
            return result
        import vineyard

        used = int(client.status.memory_usage)
        guessed = [vineyard.ObjectID(i) for i in unknown]
        if delete_all(
            client, [vineyard.ObjectID(m) for m in metas], [vineyard.ObjectID(b) for b in blobs], guessed
        ):
            for dead in found:
                dead.path.unlink(missing_ok=True)
        result.bytes = max(used - int(client.status.memory_usage), 0)
        return result


def reachable_bytes(client: Client) -> int:
    """Bytes of the blobs of this instance that some name reaches."""
    own = connected_instance(client)
    reachable = reachable_ids(client)
    return sum(
        int(m.nbytes)
        for m in client.list_metadatas("vineyard::Blob", limit=LIST_LIMIT)
        if repr(m.id) in reachable and int(m.instance_id) == own
    )


def reachable_ids(client: Client) -> set[str]:
    """Ids (``repr``) of every object a name reaches, members included, across the cluster."""
    import vineyard

    seen: set[str] = set()
    stack: list[Any] = []
    for object_id in client.list_names("*", limit=LIST_LIMIT).values():
        try:
            stack.append(client.get_meta(object_id))
        except vineyard.ObjectNotExistsException:
            continue  # a dangling name
    while stack:
        meta = stack.pop()
        if repr(meta.id) in seen:
            continue
        seen.add(repr(meta.id))
        stack.extend(v for _, v in meta.items() if isinstance(v, vineyard.ObjectMeta))
    return seen
