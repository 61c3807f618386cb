"""Puts in flight: nothing a put creates can outlive it unnamed, whatever happens to its process.

vineyardd frees nothing by itself (v6d #2072: a client that dies before sealing a blob leaks it
until restart) and vineyard's Python builders allocate a value blob by blob, so a put that fails
half-way (store full, timeout) or whose process is killed leaves blobs and metadata objects that
no name reaches. Three parts close that:

- **Journal.** :func:`tracked` records the id of every blob and metadata object the put creates
  (``create_blob`` / ``create_metadata`` of vineyard's ``Client``, which all its builders call:
  v6d ``python/vineyard/data/utils.py`` ``build_buffer`` @ v0.24.2) in the put's journal, a file
  in ``<socket>.inflight/`` next to vineyardd's IPC socket, *before* any data is written into the
  blob. A put that fails deletes what it recorded; its journal goes when the put is named.
- **Admission under concurrency.** A put first takes the folder's lock, counts the bytes that
  other puts in flight have announced but not yet allocated, and either announces its own or is
  refused: concurrent producers cannot all pass a check that only one of them fits.
- **Reclaiming.** :func:`reclaim` (``fluid-airflow gc``, and admission when the store is short)
  deletes, while no put is in flight: the objects recorded by journals whose process is gone
  (unsealed blobs are listed nowhere else), and every object of this vineyardd that no name
  reaches (sealed leftovers, half-built values). A put in flight holds its journal, so it is
  never touched. ``[fluid] reclaim_unnamed = False`` turns the second part off for a vineyardd
  shared with clients that keep unnamed objects on purpose.

Without a writable folder next to the socket (e.g. a read-only mount), puts are still rolled
back in-process, but a killed producer's blobs can only be freed by a vineyardd restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket as socketlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fluid_airflow.vineyard import blob_ids

log = logging.getLogger(__name__)

STALE_AFTER = 3600.0  # seconds: a journal of another host (pid unknown here) is treated as dead


def journal_dir(client: Any) -> Path | None:
    """``<socket>.inflight/`` of ``client``'s vineyardd (created 0700), or None when unusable."""
    if not getattr(client, "is_ipc", False):
        return None
    sock = Path(str(client.ipc_socket))
    folder = sock.with_name(sock.name + ".inflight")
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK | os.X_OK) else None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released on close, and when the process dies
        yield


@dataclass
class Journal:
    """One put's record: who runs it, what it announced, what it has created."""

    path: Path
    pid: int
    started: float
    host: str
    reserved: int = 0
    name: str = ""
    object: str = ""
    blobs: dict[str, int] = field(default_factory=dict)
    metas: list[str] = field(default_factory=list)
    asking: tuple[int, str | None] | None = None  # a create_blob with no answer: (ms, last id)

    @classmethod
    def read(cls, path: Path) -> Journal | None:
        try:
            lines = path.read_text().splitlines()
            head = json.loads(lines[0])
        except (OSError, ValueError, IndexError):
            return None  # just created and not yet written, or removed meanwhile
        journal = cls(path, int(head["pid"]), float(head["started"]), str(head["host"]))
        journal.reserved, journal.name = int(head.get("reserved", 0)), str(head.get("name", ""))
        for line in lines[1:]:
            with contextlib.suppress(ValueError):  # a line cut by a kill
                entry = json.loads(line)
                if "asking" in entry:
                    journal.asking = (int(entry["asking"]), entry.get("last"))
                elif "blob" in entry:
                    journal.asking = None
                    journal.blobs[entry["blob"]] = int(entry.get("size", 0))
                elif "meta" in entry:
                    journal.metas.append(entry["meta"])
                elif "object" in entry:
                    journal.object = entry["object"]
        return journal

    def alive(self, now: float) -> bool:
        """True while the put's process runs (or, on another host, for :data:`STALE_AFTER` s)."""
        if self.host != socketlib.gethostname():
            return now - self.started < STALE_AFTER
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except psutil.Error:
            return False

    def pending(self) -> int:
        """Announced bytes not yet allocated."""
        return max(self.reserved - sum(self.blobs.values()), 0)


def _identity() -> dict[str, Any]:
    """This process in a journal: pid, start time (tells a reused pid apart) and host."""
    pid = os.getpid()
    if _IDENTITY.get("pid") != pid:  # computed once per process (and again after a fork)
        _IDENTITY.update(pid=pid, started=psutil.Process(pid).create_time(), host=socketlib.gethostname())
    return dict(_IDENTITY)


_IDENTITY: dict[str, Any] = {}


def announced(folder: Path) -> int:
    """Upper bound of the bytes puts in flight may still allocate, from the file names alone."""
    total = 0
    for path in folder.glob("*.json"):
        with contextlib.suppress(ValueError, IndexError):
            total += int(path.stem.rsplit("-", 1)[1])
    return total


def pending(folder: Path) -> int:
    """Bytes that live puts announced and have not allocated yet (reads their journals)."""
    now = time.time()
    return sum(j.pending() for j in journals(folder) if j.alive(now))


def journals(folder: Path) -> list[Journal]:
    found = (Journal.read(p) for p in sorted(folder.glob("*.json")))
    return [j for j in found if j is not None]


class Put:
    """What one put has created so far, recorded as it happens (see :func:`tracked`)."""

    def __init__(self, client: Any, folder: Path | None) -> None:
        self.client = client
        self.folder = folder
        self.path: Path | None = None
        self.blobs: list[Any] = []
        self.metas: list[Any] = []
        self.top: Any = None
        self.asked = False  # a create_blob call is out (or failed) with no id recorded
        self._handle: Any = None

    def _write(self, entry: dict[str, Any]) -> None:
        if self._handle is not None:
            self._handle.write(json.dumps(entry) + "\n")
            self._handle.flush()  # in the kernel before the blob is written: survives a kill

    def open(self, reserved: int, name: str) -> None:
        if self.folder is None:
            return
        # The announced bytes are in the file name too, so admission can bound what other puts
        # still need from a directory listing alone.
        self.path = self.folder / f"{os.getpid()}-{secrets.token_hex(4)}-{int(reserved)}.json"
        self._handle = open(self.path, "w")  # noqa: SIM115 - closed in finish()
        self._write({**_identity(), "reserved": reserved, "name": name})

    def asking(self) -> None:
        """Journal the time a blob is asked for: if the process dies before the answer, the
        blob's id is among :func:`~.blob_ids.candidates` of it."""
        self.asked = True
        last = repr((self.blobs + self.metas)[-1]) if self.blobs or self.metas else None
        self._write({"asking": int(time.time() * 1000), "last": last})

    def blob(self, builder: Any, size: int) -> None:
        self.asked = False
        self.blobs.append(builder.id)
        self._write({"blob": repr(builder.id), "size": int(size)})

    def meta(self, meta: Any) -> None:
        self.metas.append(meta.id)
        self._write({"meta": repr(meta.id)})

    def stored(self, object_id: Any) -> None:
        self.top = object_id
        self._write({"object": repr(object_id)})

    def roll_back(self, reconnect: Any = None) -> bool:
        """Delete everything recorded (metadata shallowly, then blobs); True when all went.

        :param reconnect: ``reconnect()`` gives a fresh client when ours broke (a timed-out call
            leaves vineyard's client disconnected).
        """
        with contextlib.suppress(Exception):
            self._add_unrecorded_members()
        if _delete_all(self.client, self.metas, self.blobs):
            return True
        try:
            return reconnect is not None and _delete_all(reconnect(), self.metas, self.blobs)
        except Exception as exc:
            log.warning("Could not reconnect to delete what a failed put created: %s", exc)
            return False

    def _add_unrecorded_members(self) -> None:
        """Members of the stored object that vineyard's C++ builders allocated (Arrow data: not
        through ``create_blob``) and that no name reaches (not another object's reused blob)."""
        import vineyard

        if self.top is None:
            return
        reachable = _reachable(self.client)
        stack, known = [self.client.get_meta(self.top)], {repr(i) for i in self.metas + self.blobs}
        while stack:
            meta = stack.pop()
            stack.extend(v for _, v in meta.items() if isinstance(v, vineyard.ObjectMeta))
            if repr(meta.id) in reachable or repr(meta.id) in known or repr(meta.id) == EMPTY_BLOB:
                continue
            known.add(repr(meta.id))
            (self.blobs if meta.typename == "vineyard::Blob" else self.metas).append(meta.id)

    def finish(self, keep_journal: bool = False) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self.path is not None and not keep_journal:
            self.path.unlink(missing_ok=True)


EMPTY_BLOB = "o8000000000000000"  # vineyardd's shared empty blob: never deleted


def _delete_all(client: Any, metas: list[Any], blobs: list[Any], guessed: Sequence[Any] = ()) -> bool:
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


@contextlib.contextmanager
def tracked(client: Any, needed: int, name: str, admit: Any = None, reconnect: Any = None) -> Iterator[Put]:
    """Record what the put inside this block creates; roll it back if the block fails.

    :param needed: bytes the put will allocate (0: no admission, e.g. a migration).
    :param name: the object name the put will publish (recorded in the journal).
    :param admit: ``admit(pending, at_most)`` raising when ``needed`` does not fit next to the
        bytes other puts in flight still need (``pending()`` reads their journals; ``at_most`` is
        a cheap upper bound of it); called under the folder's lock.
    :raises: whatever the block or ``admit`` raises, after the rollback.
    """
    folder = journal_dir(client)
    put = Put(client, folder)
    if folder is None:
        if admit is not None:
            admit(lambda: 0, 0)
    else:
        with _locked(folder):
            if admit is not None:
                admit(lambda: pending(folder), announced(folder))
            put.open(needed, name)
    real_blob, real_meta = client.create_blob, client.create_metadata

    def create_blob(size: int) -> Any:
        import vineyard

        put.asking()
        try:
            builder = real_blob(size)
        except vineyard.NotEnoughMemoryException:
            put.asked = False  # refused: vineyardd allocated nothing
            raise
        put.blob(builder, size)
        return builder

    def create_metadata(meta: Any, *args: Any, **kwargs: Any) -> Any:
        created = real_meta(meta, *args, **kwargs)
        put.meta(created)
        return created

    client.create_blob, client.create_metadata = create_blob, create_metadata
    try:
        yield put
    except BaseException:
        del client.create_blob, client.create_metadata
        # gc finishes what is left, including a blob whose id never came back (only gc may try
        # candidate ids: it runs while no other put is in flight).
        put.finish(keep_journal=not put.roll_back(reconnect) or put.asked)
        raise
    else:
        del client.create_blob, client.create_metadata
        put.finish()


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


def reclaim(client: Any, *, dry_run: bool = False, unnamed: bool = True, locked: bool = False) -> Reclaimed:
    """Free what no name reaches in ``client``'s vineyardd, unless a put is in flight there.

    :param unnamed: also delete sealed objects of this instance that no name reaches (not only
        what dead puts' journals recorded).
    :param locked: the caller holds the journal folder's lock already (admission).
    :returns: objects and bytes freed (a dry run: found), dead journals handled, and how many
        puts were in flight (then nothing is touched).
    """
    folder = journal_dir(client)
    lock = _locked(folder) if folder is not None and not locked else contextlib.nullcontext()
    with lock:
        now = time.time()
        found = journals(folder) if folder is not None else []
        live = [j for j in found if j.alive(now)]
        if live:
            return Reclaimed(in_flight=len(live))
        reachable = _reachable(client)
        own = int(client.instance_id)
        listed = {
            repr(m.id): m for m in client.list_metadatas("*", limit=1_000_000) if int(m.instance_id) == own
        }
        metas: dict[str, int] = {}
        blobs: dict[str, int] = {}
        unknown: list[int] = []
        for journal in found:  # dead: their process is gone
            blobs.update({b: n for b, n in journal.blobs.items() if b not in reachable})
            metas.update({m: 0 for m in journal.metas if m not in reachable})
            if journal.asking is not None:  # ids that exist are listed: never a candidate
                guesses = blob_ids.candidates(*journal.asking)
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
        if _delete_all(
            client, [vineyard.ObjectID(m) for m in metas], [vineyard.ObjectID(b) for b in blobs], guessed
        ):
            for journal in found:
                journal.path.unlink(missing_ok=True)
        result.bytes = max(used - int(client.status.memory_usage), 0)
        return result


def reachable_bytes(client: Any) -> int:
    """Bytes of the blobs of this instance that some name reaches."""
    own = int(client.instance_id)
    reachable = _reachable(client)
    return sum(
        int(m.nbytes)
        for m in client.list_metadatas("vineyard::Blob", limit=1_000_000)
        if repr(m.id) in reachable and int(m.instance_id) == own
    )


def _reachable(client: Any) -> set[str]:
    """Ids (``repr``) of every object a name reaches, members included, across the cluster."""
    import vineyard

    seen: set[str] = set()
    stack: list[Any] = []
    for object_id in client.list_names("*", limit=1_000_000).values():
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
