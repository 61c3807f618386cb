"""Producer and consumer processes, and what is measured in them.

Two long-lived worker processes are spawned per benchmark: the *producer* (builds and holds the
value of the current case) and the *consumer*. Both import everything the peers need once, at
start, like an Airflow worker that has imported the DAG file. Each put, get and purge then runs
in a **fresh process forked** from its worker, so every hand-off pays what a new Airflow task
process pays (connecting to vineyardd, opening files, first-touch page faults, a fresh
allocator), and one hand-off's caches and freed memory cannot flatter the next.

Memory of a forked consumer (all in bytes):

- ``rss_growth``: peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) during get +
  scan, minus RSS before. Includes shared pages the consumer maps (vineyardd's memory, mmapped
  files), which are not a copy.
- ``private_growth``: growth of private (anonymous) memory, i.e. the consumer's own copy: the
  largest of the peak sampled every 2 ms by the parent from ``/proc/<pid>/statm``
  (resident - shared), ``rss_growth`` minus the shared pages mapped at the end, and the growth
  at the end. Each is a lower bound of the true peak; together they are close.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import multiprocessing as mp
import resource
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import data
from bench.peers import Peer, RowStore

PAGE = 4096
SAMPLE_SECONDS = 0.002
OP_TIMEOUT = 900.0  # seconds a single put/get/purge may take before it is killed


def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of this process, in bytes."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in wanted:
            out[name] = int(rest.split()[0]) * 1024
    return out


def _anon_bytes(pid: int) -> int | None:
    """Resident private (anonymous) bytes of ``pid``: statm resident - shared."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    return (int(fields[1]) - int(fields[2])) * PAGE


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``), so an
    interrupted benchmark leaves no worker behind holding memory."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def release_freed_memory() -> None:
    """Return freed memory to the OS (Python, glibc malloc, Arrow's pool) so it is not reused unseen."""
    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryWindow:
    """Memory of this process over a window (see the module docstring); use as a context manager."""

    def __enter__(self) -> MemoryWindow:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        self.before = _status()
        self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        return self

    def __exit__(self, *exc: object) -> None:
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults
        self.after = _status()

    def result(self) -> dict[str, int]:
        """``rss_growth``, ``shared_growth``, ``anon_before``, ``anon_growth_end`` (bytes) and
        ``faults`` (minor page faults: each maps one 4 KiB page)."""
        b, a = self.before, self.after
        shared = (a["RssFile"] + a["RssShmem"]) - (b["RssFile"] + b["RssShmem"])
        return {
            "faults": self.faults,
            "rss_growth": a["VmHWM"] - b["VmRSS"],
            "shared_growth": shared,
            "anon_before": b["RssAnon"],
            "anon_growth_end": a["RssAnon"] - b["RssAnon"],
        }


def _in_fork(fn: Callable[[], dict[str, Any]], sample: bool) -> dict[str, Any]:
    """Run ``fn`` in a forked child; return its dict (or ``{"error": ...}``) and, when ``sample``,
    the child's peak anonymous memory as ``anon_peak``."""
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)

    def child() -> None:
        die_with_parent()
        try:
            result = fn()
        except BaseException as exc:
            tail = traceback.format_exc(limit=-3).strip().splitlines()[-1]
            result = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "where": tail[:300]}
        sender.send(result)

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    sender.close()
    peak = 0
    deadline = time.monotonic() + OP_TIMEOUT
    while not receiver.poll(SAMPLE_SECONDS if sample else 0.5):
        if sample:
            peak = max(peak, _anon_bytes(proc.pid) or 0)
        if time.monotonic() > deadline or not proc.is_alive():
            break
    try:
        result = receiver.recv() if receiver.poll(1) else {"error": f"no result after {OP_TIMEOUT:.0f} s"}
    except EOFError:
        result = {"error": "worker died"}
    proc.join(30)
    if proc.is_alive():
        proc.kill()
        proc.join()
    code = proc.exitcode
    if code:
        note = f"killed by signal {-code}, out of memory?" if code < 0 else f"exit code {code}"
        result["error"] = f"{result.get('error', 'worker failed')} ({note})"
    receiver.close()
    if sample:
        result["anon_peak"] = peak
    return result


def _preimport() -> None:
    """Import what any peer uses, and warm Airflow's serde, before the first fork."""
    import pandas as pd
    import pyarrow.compute
    import pyarrow.ipc
    import pyarrow.parquet  # noqa: F401  (the serde of the default and object-storage backends)
    from airflow.providers.common.io.xcom.backend import XComObjectStorageBackend  # noqa: F401
    from airflow.sdk import ObjectStoragePath  # noqa: F401
    from airflow.sdk.bases.xcom import BaseXCom

    import fluid_airflow.vineyard.xcom  # noqa: F401
    from bench.peers import _Row

    # After fluid_airflow, whose import hook lets vineyard import without pkg_resources (~0.6 s;
    # the backend imports it on first use).
    importlib.import_module("vineyard")

    small = pd.DataFrame({"a": [1.0]})
    BaseXCom.deserialize_value(_Row("k", BaseXCom.serialize_value(small)))
    # Kinds of their own; a consumer has them imported too. Importing polars starts no threads,
    # so forking afterwards is safe (building a frame would be: see data.PolarsSource).
    for optional in ("polars", "torch"):
        with contextlib.suppress(ImportError):
            importlib.import_module(optional)


def serve(conn: Connection, role: str, peers: list[Peer], rows_path: str) -> None:
    """Worker main loop: answer commands from :class:`Worker` until ``exit``."""
    die_with_parent()
    _preimport()
    by_name = {p.name: p for p in peers}
    rows = RowStore(Path(rows_path))
    value: Any = None
    while True:
        cmd = conn.recv()
        op = cmd["op"]
        if op == "exit":
            break
        if op == "make":
            value = None
            release_freed_memory()
            start = time.perf_counter()
            value, payload = data.make(cmd["kind"], cmd["nbytes"])
            conn.send({"payload": payload, "seconds": time.perf_counter() - start})
        elif op == "drop":
            value = None
            release_freed_memory()
            conn.send({})
        elif op == "put":
            conn.send(_in_fork(_put(by_name[cmd["peer"]], value, cmd["case_id"], rows), sample=True))
        elif op == "get":
            conn.send(_in_fork(_get(by_name[cmd["peer"]], cmd["case_id"], rows), sample=True))
        elif op == "purge":
            conn.send(_in_fork(_purge(by_name[cmd["peer"]], cmd["case_id"], rows), sample=False))
        else:
            conn.send({"error": f"unknown op {op!r}"})


def _put(peer: Peer, value: Any, case_id: str, rows: RowStore) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        peer.activate()
        made = value.make() if isinstance(value, data.PolarsSource) else value  # before the clock
        with MemoryWindow() as window:
            start = time.perf_counter()
            row_bytes = peer.put(made, case_id, rows)
            seconds = time.perf_counter() - start
        stored = peer.stored_bytes(case_id, rows)
        peer.close()
        return {"put_s": seconds, "row_bytes": row_bytes, "stored_bytes": stored, **window.result()}

    return run


def _get(peer: Peer, case_id: str, rows: RowStore) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        peer.activate()
        with MemoryWindow() as window:
            start = time.perf_counter()
            value = peer.get(case_id, rows)
            got = time.perf_counter()
            data.scan(value)
            scanned = time.perf_counter()
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        del value
        peer.close()
        return {"get_s": got - start, "get_scan_s": scanned - start, "type": kind, **window.result()}

    return run


def _purge(peer: Peer, case_id: str, rows: RowStore) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        peer.activate()
        peer.purge(case_id, rows)
        peer.close()
        return {}

    return run


class Worker:
    """Handle on a spawned producer or consumer worker process (see :func:`serve`)."""

    def __init__(self, role: str, peers: list[Peer], rows_path: Path) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.role = role
        self._proc = ctx.Process(
            target=serve, args=(child, role, peers, str(rows_path)), name=f"bench-{role}"
        )
        self._proc.start()
        child.close()

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        """Send one command and wait for its answer.

        :raises RuntimeError: the worker died or did not answer within the op timeout.
        """
        self._conn.send({"op": op, **kwargs})
        if not self._conn.poll(OP_TIMEOUT + 120):
            raise RuntimeError(f"{self.role} worker did not answer {op!r} within {OP_TIMEOUT + 120:.0f} s")
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(
                f"{self.role} worker died during {op!r} (exit code {self._proc.exitcode})"
            ) from exc

    def close(self) -> None:
        """Stop the worker (politely, then by pid)."""
        if self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send({"op": "exit"})
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
