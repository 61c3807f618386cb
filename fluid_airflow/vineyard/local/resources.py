"""What the local vineyardd needs from the machine: memory, its binary, a socket that answers.

* :func:`parse_size` turns a ``--size`` string into bytes, agreeing with vineyardd's own parser.
* :func:`memory_limits` / :func:`cgroup_limits` find how much memory this machine *and* this
  process's cgroup can still give (pure over a ``/proc`` and a cgroup root, so tests can feed fake
  files), and :func:`check_memory` refuses a size above the tightest one.
* :func:`find_vineyardd` locates the bundled binary; :func:`socket_answers` and
  :func:`query_instance` probe an IPC socket (raw connect, then a vineyard client handshake);
  :func:`wait_for_exit` waits for a process to end.

Why the cgroup matters: vineyardd allocates its arena with ``memfd_create(2)`` (v6d
``src/server/memory/malloc.cc`` @ v0.24.2; docs/design.md §6), which appears neither in ``/dev/shm``
nor in ``df`` and is charged to the cgroup of the process that touches the pages (Linux
``Documentation/admin-guide/cgroup-v2.rst``, "Memory Ownership"). A container's limit is invisible
to ``psutil`` (it reads the host's ``/proc/meminfo``), and exceeding it makes clients die with
SIGBUS (v6d #38, #316, #574) or the OOM killer step in, long after vineyardd started happily.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket as socketlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from fluid_airflow.exceptions import (
    InsufficientMemoryError,
    InvalidSizeError,
    VineyardConnectionError,
    VineyardDaemonError,
)
from fluid_airflow.units import format_bytes

KiB = 1 << 10
GiB = 1 << 30

#: vineyardd's multipliers (``parse_memory_size``, v6d ``src/common/util/env.cc`` @ v0.24.2): every
#: suffix is a power of two, with or without ``i``: ``1G`` == ``1Gi`` == 2**30 bytes (unlike Kubernetes).
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}

_SIZE_RE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>[kmgtpe]i?)?", re.IGNORECASE)

#: Smallest size accepted. vineyardd 0.24.2 aborts with "Not enough memory: mmap failed" for
#: ``--size 1`` and ``--size 1K`` and serves with ``--size 4096`` (tested).
MIN_SIZE_BYTES = 4 * KiB

#: cgroup v1 reports "no limit" as LONG_MAX rounded down to a page (9223372036854771712).
_CGROUP_V1_UNLIMITED = 1 << 62


def parse_size(text: str) -> int:
    """Return the number of bytes a vineyardd ``--size`` string means.

    Accepted: a whole number of bytes (``1024000``), or a number, optionally with a decimal
    fraction, followed by ``K``, ``M``, ``G``, ``T``, ``P`` or ``E`` with or without ``i``, in any
    case (``512Mi``, ``1024M``, ``1G``, ``2Gi``, ``1.5Gi``). As in vineyardd (``vineyardd --help``;
    ``parse_memory_size`` in v6d ``src/common/util/env.cc``) every suffix is binary: ``1G`` and
    ``1Gi`` are both 1073741824 bytes, and fractions are rounded down to whole bytes.

    Stricter than vineyardd, which ignores whatever follows the first suffix letter and turns
    anything it cannot read (``lots``, ``0``, ``-1``) into "all physical memory": here ``2GB``,
    ``1 G``, ``lots``, ``0``, ``-1``, ``1e9``, ``1.5`` (fractional bytes) and the empty string are
    refused, as is anything below :data:`MIN_SIZE_BYTES`.

    :raises InvalidSizeError: ``text`` is not such a size.
    """
    raw = text.strip() if isinstance(text, str) else text
    match = _SIZE_RE.fullmatch(raw) if isinstance(raw, str) else None
    if match is None or ("." in match["number"] and not match["unit"]):
        raise InvalidSizeError(
            f"vineyardd size {text!r} is not a memory size: write a whole number of bytes or a number "
            "with a binary unit, e.g. 512Mi, 2Gi, 1.5Gi, 1G (= 1Gi in vineyardd) or 1073741824; "
            "set it with --size or AIRFLOW__FLUID__LOCAL_VINEYARD_SIZE"
        )
    unit = (match["unit"] or "")[:1].lower()
    # Same double arithmetic as vineyardd (strtod, then a cast), so both sides agree on the byte.
    size = int(float(match["number"]) * _UNITS[unit])
    if size < MIN_SIZE_BYTES:
        raise InvalidSizeError(
            f"vineyardd size {text!r} is {size} bytes, below the minimum of {MIN_SIZE_BYTES} bytes "
            "(vineyardd cannot map less than a page); ask for e.g. 512Mi"
        )
    return size


@dataclass(frozen=True)
class MemoryLimit:
    """One bound on the memory vineyardd may use.

    ``available_bytes`` is what is left under the bound; ``limit_bytes`` / ``used_bytes`` are the
    bound and its current use when known (``None`` for ``psutil``'s estimate).
    """

    source: str
    available_bytes: int
    limit_bytes: int | None = None
    used_bytes: int | None = None

    def describe(self) -> str:
        """One line naming the bound and its numbers, for error messages."""
        if self.limit_bytes is None:
            return f"{self.source}: {format_bytes(self.available_bytes)} available"
        return (
            f"{self.source}: limit {format_bytes(self.limit_bytes)}, in use "
            f"{format_bytes(self.used_bytes or 0)}, {format_bytes(self.available_bytes)} available"
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _stat_value(stat_text: str | None, *keys: str) -> int:
    """First of ``keys`` found in a ``memory.stat`` text, else 0."""
    values = {}
    for line in (stat_text or "").splitlines():
        name, _, number = line.partition(" ")
        if number.strip().isdigit():
            values[name] = int(number)
    return next((values[k] for k in keys if k in values), 0)


def _own_cgroup_paths(proc_root: Path) -> tuple[str | None, str | None]:
    """(cgroup v1 memory path, cgroup v2 path) of this process from ``<proc_root>/self/cgroup``.

    Lines are ``hierarchy-id:controllers:path`` (``man 7 cgroups``); v2 is ``0::path``.
    """
    v1 = v2 = None
    for line in (_read(proc_root / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v1, v2


def _walk_up(mount: Path, path: str) -> Iterable[Path]:
    """The cgroup directory of ``path`` under ``mount`` and its ancestors up to ``mount``.

    Without a cgroup namespace a container sees its host-side path in /proc/self/cgroup while its
    own cgroup is mounted at ``mount`` itself; a path that does not exist falls back to ``mount``.
    """
    start = mount / path.lstrip("/")
    if not start.is_dir():
        start = mount
    node = start
    while True:
        yield node
        if node == mount or mount not in node.parents:
            return
        node = node.parent


def cgroup_limits(
    proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> list[MemoryLimit]:
    """Memory limits of this process's cgroup and its ancestors that are set (not "max").

    cgroup v1 (memory controller mounted at ``<cgroup_root>/memory``): ``memory.limit_in_bytes``
    minus ``memory.usage_in_bytes``. cgroup v2 (``<cgroup_root>`` or ``<cgroup_root>/unified``):
    ``memory.max`` minus ``memory.current``; ``max`` means unlimited. From the use, the reclaimable
    ``inactive_file`` page cache of ``memory.stat`` is subtracted (the kubelet's "working set"), so
    a cgroup that merely read big files is not reported full. Unreadable files are skipped.

    :param proc_root: where ``self/cgroup`` is read (``/proc``; tests pass a fake tree).
    :param cgroup_root: where the cgroup file systems are mounted.
    :returns: one :class:`MemoryLimit` per limited cgroup level, in bytes; empty when unlimited.
    """
    v1_path, v2_path = _own_cgroup_paths(proc_root)
    candidates: list[tuple[str, Path, str, str, tuple[str, ...]]] = []
    if v1_path is not None and (cgroup_root / "memory").is_dir():
        for node in _walk_up(cgroup_root / "memory", v1_path):
            stat_keys: tuple[str, ...] = ("total_inactive_file", "inactive_file")
            candidates.append(("v1", node, "memory.limit_in_bytes", "memory.usage_in_bytes", stat_keys))
    if v2_path is not None:
        for mount in (cgroup_root, cgroup_root / "unified"):
            if (mount / "cgroup.controllers").is_file():
                for node in _walk_up(mount, v2_path):
                    candidates.append(("v2", node, "memory.max", "memory.current", ("inactive_file",)))
                break
    limits = []
    for version, node, limit_name, usage_name, stat_keys in candidates:
        limit_text, usage_text = _read(node / limit_name), _read(node / usage_name)
        if not limit_text or not usage_text or limit_text == "max":
            continue
        try:
            limit, usage = int(limit_text), int(usage_text)
        except ValueError:
            continue
        if limit >= _CGROUP_V1_UNLIMITED:
            continue
        used = max(0, usage - _stat_value(_read(node / "memory.stat"), *stat_keys))
        limits.append(
            MemoryLimit(
                source=f"cgroup {version} {node / limit_name}",
                available_bytes=max(0, limit - used),
                limit_bytes=limit,
                used_bytes=used,
            )
        )
    return limits


def memory_limits(
    proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> list[MemoryLimit]:
    """The machine's available memory (``psutil.virtual_memory().available``) plus :func:`cgroup_limits`."""

    machine = MemoryLimit(
        source="machine (psutil available memory)", available_bytes=psutil.virtual_memory().available
    )
    return [machine, *cgroup_limits(proc_root, cgroup_root)]


def check_memory(size_bytes: int, limits: Iterable[MemoryLimit], size_text: str | None = None) -> None:
    """Refuse ``size_bytes`` when it exceeds what any of ``limits`` has available.

    :raises InsufficientMemoryError: naming the needed and available bytes and the bound hit.
    """
    limits = list(limits)
    if not limits:
        return
    tightest = min(limits, key=lambda lim: lim.available_bytes)
    if size_bytes <= tightest.available_bytes:
        return
    asked = f"{size_text!r} = " if size_text else ""
    raise InsufficientMemoryError(
        f"vineyardd cannot get {asked}{size_bytes} bytes ({format_bytes(size_bytes)}) of shared memory: "
        f"only {tightest.available_bytes} bytes ({format_bytes(tightest.available_bytes)}) are available "
        f"under {tightest.describe()}. vineyardd's memfd memory is charged to this cgroup and a store "
        "larger than the memory behind it crashes its clients with SIGBUS; ask for a smaller --size "
        "(AIRFLOW__FLUID__LOCAL_VINEYARD_SIZE) or give the machine/container more memory."
    )


#: ``sizeof(sockaddr_un.sun_path)`` on Linux is 108, one byte of which is the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


def find_vineyardd() -> Path:
    """Path of the ``vineyardd`` binary of the installed ``vineyard-bdist`` wheel (PATH is not used).

    :raises VineyardDaemonError: the wheel or the binary is missing.
    """
    # find_spec("vineyard.bdist") would import vineyard itself (~1 s, pandas, pyarrow): look beside it.
    spec = importlib.util.find_spec("vineyard")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "bdist" / "vineyardd"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    raise VineyardDaemonError(
        "vineyardd binary not found: the vineyard-bdist wheel (which ships vineyard/bdist/vineyardd) is "
        "not installed in this environment; install it with `pip install vineyard-bdist==0.24.2`"
    )


def socket_answers(path: str | os.PathLike[str], timeout: float = 1.0) -> bool:
    """True when something accepts a connection on the UNIX socket ``path`` (no vineyard handshake)."""
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _skip_ipc_retry() -> Iterator[None]:
    # The client retries a failing IPC connect for 10 s; with this variable once, ~1 s (design.md §4).
    previous = os.environ.get("VINEYARD_IPC_SKIP_RETRY")
    os.environ["VINEYARD_IPC_SKIP_RETRY"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("VINEYARD_IPC_SKIP_RETRY", None)
        else:
            os.environ["VINEYARD_IPC_SKIP_RETRY"] = previous


def query_instance(path: str | os.PathLike[str], timeout: float = 5.0) -> dict[str, int]:
    """Handshake with the vineyardd at ``path`` and return its ``client.status`` numbers.

    :param timeout: seconds the handshake and the status call may each wait for an answer.
    :returns: ``memory_usage`` and ``memory_limit`` (bytes) and ``instance_id``.
    :raises VineyardConnectionError: nothing answers, or it does not speak vineyard's IPC protocol.
    :raises VineyardTimeoutError: it accepts connections but does not answer (hung).
    """
    if not socket_answers(path):
        raise VineyardConnectionError(f"no process listens on the vineyard IPC socket {os.fspath(path)}")
    from fluid_airflow.vineyard.client import calls

    calls.probe("ipc", os.fspath(path), timeout)  # vineyard.connect itself would wait 300 s
    import vineyard  # ~1 s to import; only here, never at module import time

    try:
        with _skip_ipc_retry():
            client = vineyard.connect(os.fspath(path))
        client.timeout_seconds = max(1, round(timeout))
    except Exception as exc:
        raise VineyardConnectionError(
            f"the process on {os.fspath(path)} does not answer as vineyardd: {exc}"
        ) from exc
    try:
        status = client.status
        return {
            "memory_usage": int(status.memory_usage),
            "memory_limit": int(status.memory_limit),
            "instance_id": int(status.instance_id),
        }
    finally:
        client.close()


def wait_for_exit(proc: psutil.Process, timeout: float) -> bool:
    """True once ``proc`` exits within ``timeout`` s. A zombie counts: only its parent can reap it
    (psutil's ``wait`` on another process's child would wait for the reaping, not the exit)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(0.05)  # reaps it when it is our own child
            return True
        except psutil.NoSuchProcess:
            return True
        except psutil.TimeoutExpired:
            pass
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
