"""Put journals: one file per put in flight, in ``<socket>.inflight/`` next to vineyardd's IPC socket.

A journal's first line is JSON with the put's process (pid, start time, host), the bytes it
announced and the name it will publish; each further line records one thing the put did, written
and flushed *before* the blob is written so it survives a kill: ``{"asking": ms, "last": id}`` (a
``create_blob`` is out), ``{"blob": id, "size": n}``, ``{"meta": id}``, ``{"object": id}``. The
announced bytes are also in the file name (``<pid>-<token>-<bytes>.json``), so admission can bound
what other puts still need from a directory listing alone. Writing them is :mod:`.inflight`;
freeing what dead puts recorded is :mod:`.reclaim`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket as socketlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from vineyard import Client

STALE_AFTER = 3600.0  # seconds: a journal of another host (pid unknown here) is treated as dead


def journal_dir(client: Client) -> Path | None:
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
def locked(folder: Path) -> Iterator[None]:
    """Serialise admission, journal creation and reclaiming on ``folder``."""
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


def identity() -> dict[str, Any]:
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
    """Every readable journal in ``folder``, live or dead."""
    found = (Journal.read(p) for p in sorted(folder.glob("*.json")))
    return [j for j in found if j is not None]
