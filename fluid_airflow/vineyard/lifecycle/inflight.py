"""Puts in flight: nothing a put creates can outlive it unnamed, whatever happens to its process.

vineyardd frees nothing by itself (v6d #2072: a client that dies before sealing a blob leaks it
until restart) and vineyard's Python builders allocate a value blob by blob, so a put that fails
half-way (store full, timeout) or whose process is killed leaves blobs and metadata objects that
no name reaches. Three parts close that (the journal format is :mod:`.journal`, reclaiming
:mod:`.reclaim`):

- **Journal.** :func:`tracked` records the id of every blob and metadata object the put creates
  (``create_blob`` / ``create_metadata`` of vineyard's ``Client``, which all its builders call:
  v6d ``python/vineyard/data/utils.py`` ``build_buffer`` @ v0.24.2) in the put's journal, a file
  in ``<socket>.inflight/`` next to vineyardd's IPC socket, *before* any data is written into the
  blob. A put that fails deletes what it recorded; its journal goes when the put is named.
- **Admission under concurrency.** A put first takes the folder's lock, counts the bytes that
  other puts in flight have announced but not yet allocated, and either announces its own or is
  refused: concurrent producers cannot all pass a check that only one of them fits.
- **Reclaiming.** :func:`~.reclaim.reclaim` (``fluid-airflow gc``, and admission when the store is short)
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
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fluid_airflow.vineyard.lifecycle import journal, reclaim

if TYPE_CHECKING:
    from vineyard import Client

log = logging.getLogger(__name__)


class Put:
    """What one put has created so far, recorded as it happens (see :func:`tracked`)."""

    def __init__(self, client: Client, folder: Path | None) -> None:
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
        self._write({**journal.identity(), "reserved": reserved, "name": name})

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
        if reclaim.delete_all(self.client, self.metas, self.blobs):
            return True
        try:
            return reconnect is not None and reclaim.delete_all(reconnect(), self.metas, self.blobs)
        except Exception as exc:
            log.warning("Could not reconnect to delete what a failed put created: %s", exc)
            return False

    def _add_unrecorded_members(self) -> None:
        """Members of the stored object that vineyard's C++ builders allocated (Arrow data: not
        through ``create_blob``) and that no name reaches (not another object's reused blob)."""
        import vineyard

        if self.top is None:
            return
        reachable = reclaim.reachable_ids(self.client)
        stack, known = [self.client.get_meta(self.top)], {repr(i) for i in self.metas + self.blobs}
        while stack:
            meta = stack.pop()
            stack.extend(v for _, v in meta.items() if isinstance(v, vineyard.ObjectMeta))
            if repr(meta.id) in reachable or repr(meta.id) in known or repr(meta.id) == reclaim.EMPTY_BLOB:
                continue
            known.add(repr(meta.id))
            (self.blobs if meta.typename == "vineyard::Blob" else self.metas).append(meta.id)

    def finish(self, keep_journal: bool = False) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self.path is not None and not keep_journal:
            self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def tracked(
    client: Client, needed: int, name: str, admit: Any = None, reconnect: Any = None
) -> Iterator[Put]:
    """Record what the put inside this block creates; roll it back if the block fails.

    :param needed: bytes the put will allocate (0: no admission, e.g. a migration).
    :param name: the object name the put will publish (recorded in the journal).
    :param admit: ``admit(pending, at_most)`` raising when ``needed`` does not fit next to the
        bytes other puts in flight still need (``pending()`` reads their journals; ``at_most`` is
        a cheap upper bound of it); called under the folder's lock.
    :raises: whatever the block or ``admit`` raises, after the rollback.
    """
    folder = journal.journal_dir(client)
    put = Put(client, folder)
    if folder is None:
        if admit is not None:
            admit(lambda: 0, 0)
    else:
        with journal.locked(folder):
            if admit is not None:
                admit(lambda: journal.pending(folder), journal.announced(folder))
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
