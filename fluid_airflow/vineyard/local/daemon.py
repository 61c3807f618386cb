"""A single-node vineyardd kept in a runtime folder: start, stop, status.

Facts relied on (docs/design.md §7 and §11; v6d ``src/server/util/spec_resolvers.cc`` @ v0.24.2): the
binary ships in the ``vineyard-bdist`` wheel as ``vineyard/bdist/vineyardd``; ``--meta local`` needs
no etcd. ``vineyard.deploy.local.start_vineyardd`` / ``try_init`` are not used: they default to etcd,
take ~60 s to exit and tie the daemon to the calling interpreter. The daemon's files are
:mod:`.daemon_files`, its process control :mod:`.daemon_process`; this module orders the steps.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fluid_airflow.exceptions import SocketInUseError, VineyardConnectionError, VineyardDaemonError
from fluid_airflow.vineyard.local import daemon_process, private_dir
from fluid_airflow.vineyard.local.daemon_files import DaemonFiles
from fluid_airflow.vineyard.local.resources import (
    check_memory,
    find_vineyardd,
    memory_limits,
    parse_size,
    query_instance,
    socket_answers,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaemonStatus:
    """State of the local vineyardd. Sizes in bytes, ``started_at`` in seconds since the epoch.

    ``running`` means a vineyard client handshake on ``socket`` succeeded; then ``memory_usage``,
    ``memory_limit`` and ``instance_id`` come from that client's ``status``, otherwise they are None.
    ``pid`` is the verified pid of our vineyardd (its command line names ``socket``), else None.
    """

    running: bool
    pid: int | None
    socket: str
    size_bytes: int | None
    memory_usage: int | None
    memory_limit: int | None
    instance_id: int | None
    size: str | None = None
    started_at: float | None = None
    log_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return asdict(self)


class LocalVineyardd:
    """One vineyardd with ``--meta local`` whose socket, pid, state and log files live in ``runtime_dir``.

    Files: ``vineyard.sock`` (unless ``socket`` is given), ``vineyardd.pid``, ``vineyardd.json`` (socket,
    size, size_bytes, pid, started_at, argv, rpc_port), ``vineyardd.log`` (the previous one is kept as
    ``vineyardd.log.1``) and ``vineyardd.lock`` (serialises start/stop). The folder is created with
    mode 0700 and the socket made 0600 (anyone who can open the socket can read and replace every
    object); an existing folder that is not private is refused (:mod:`.private_dir`).

    :param runtime_dir: the folder; default ``fluid_airflow.config.runtime_dir()`` (``[fluid] runtime_dir``).
    :param socket: IPC socket path; default ``<runtime_dir>/vineyard.sock``. ``stop``/``status`` use the
        socket recorded at start when there is one.
    :param binary: vineyardd executable; default :func:`find_vineyardd`.
    :param socket_group: group also allowed to use the socket; default ``[fluid] socket_group``.
    """

    def __init__(
        self,
        runtime_dir: str | os.PathLike[str] | None = None,
        *,
        socket: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        socket_group: str | None = None,
    ) -> None:
        from fluid_airflow import config

        self.socket_group = socket_group or config.get("socket_group") or None

        self.runtime_dir = Path(runtime_dir).expanduser() if runtime_dir else config.runtime_dir()
        self.runtime_dir = self.runtime_dir.absolute()
        self._socket = Path(socket).expanduser().absolute() if socket else None
        self._binary = Path(binary) if binary else None
        self.files = DaemonFiles(self.runtime_dir, self.socket_group)
        self.pid_file = self.files.pid_file
        self.state_file = self.files.state_file
        self.log_file = self.files.log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        """The IPC socket: given, else recorded at start, else ``<runtime_dir>/vineyard.sock``."""
        if self._socket is not None:
            return self._socket
        recorded = self.files.read_state().get("socket")
        return Path(recorded) if recorded else self.runtime_dir / "vineyard.sock"

    def _our_pid(self, socket: Path) -> int | None:
        return daemon_process.serving_pid(socket, self.files.read_pid())

    def pid(self) -> int | None:
        """Verified pid of the vineyardd serving :attr:`socket_path`, or None when none is alive."""
        return self._our_pid(self.socket_path)

    # -- start ---------------------------------------------------------------------------------
    def start(
        self,
        size: str | None = None,
        *,
        rpc_port: int | None = None,
        allow_public_rpc: bool = False,
        etcd_endpoint: str | None = None,
        reserve_memory: bool = False,
        timeout: float = 30.0,
    ) -> DaemonStatus:
        """Start vineyardd in the background and wait until its socket answers a vineyard client.

        Every check runs before anything is spawned. The daemon is started with ``--meta local
        --norpc`` (unless told otherwise) in its own session (it outlives the caller) with
        ``GLOG_logtostderr=1`` so its log goes to ``log_file`` instead of glog files in /tmp.

        :param size: shared memory, see :func:`~fluid_airflow.vineyard.local.resources.parse_size`; default
            ``[fluid] local_vineyard_size``. Passed to vineyardd as a byte count.
        :param rpc_port: also serve RPC on this TCP port. vineyardd then listens on **all interfaces,
            unauthenticated**; refused unless ``allow_public_rpc`` is True.
        :param etcd_endpoint: keep metadata in the etcd at this URL (``http://127.0.0.1:2379``,
            ``--meta etcd``) instead of ``--meta local``: what a VineyardRuntime's cache nodes do, so
            names of persisted objects are visible to every vineyardd on that etcd.
        :param reserve_memory: have vineyardd touch all of ``size`` at start (its
            ``--reserve_memory``): the memory is taken from the machine at once, and the first puts
            skip first-touch page faults (measured on 2 cores: ~0.7 s per GiB moved from the first
            1 GiB put to the start).
        :param timeout: seconds to wait for the socket to answer.
        :returns: the status of the running daemon.
        :raises InvalidSizeError: ``size`` is not a size.
        :raises InsufficientMemoryError: the machine or its cgroup has less memory available than ``size``.
        :raises SocketInUseError: a live process already answers on the socket.
        :raises VineyardDaemonError: socket path too long, RPC without opt-in, binary missing, or the
            daemon exited or did not answer within ``timeout`` (the message ends with its log).
        """
        from fluid_airflow import config

        size_text = size if size is not None else config.get("local_vineyard_size")
        size_bytes = parse_size(size_text)
        sock = self.socket_path
        argv = self._argv(sock, size_bytes, rpc_port, allow_public_rpc, etcd_endpoint)
        if reserve_memory:
            argv.append("--reserve_memory")
        check_memory(size_bytes, memory_limits(), size_text)
        with self.files.locked():
            self._refuse_or_clean(sock)
            process = self._spawn(argv, sock)
            state = {"socket": str(sock), "size": size_text, "size_bytes": size_bytes, "pid": process.pid}
            state.update(started_at=time.time(), argv=argv, rpc_port=rpc_port, etcd_endpoint=etcd_endpoint)
            self.files.record(process.pid, state)
            self._wait_ready(process, sock, timeout)
        pid = process.pid
        log.info("vineyardd started: pid %s, socket %s, size %s (%s bytes)", pid, sock, size_text, size_bytes)
        return self.status()

    def _argv(
        self,
        sock: Path,
        size_bytes: int,
        rpc_port: int | None,
        allow_public_rpc: bool,
        etcd_endpoint: str | None,
    ) -> list[str]:
        """vineyardd's command line, after the checks that need no lock (RPC opt-in, socket path, binary)."""
        rpc_args = daemon_process.rpc_args(rpc_port, allow_public_rpc)
        daemon_process.check_socket_path(sock)
        binary = self._binary or find_vineyardd()
        meta = ["etcd", "--etcd_endpoint", etcd_endpoint] if etcd_endpoint else ["local"]
        return [
            os.fspath(binary),
            "--socket",
            str(sock),
            "--size",
            str(size_bytes),
            "--meta",
            *meta,
            *rpc_args,
        ]

    def _refuse_or_clean(self, sock: Path) -> None:
        """Raise if a live process serves ``sock``; remove the leftovers of a dead daemon."""
        pid = self._our_pid(sock)
        try:
            mode = sock.lstat().st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISSOCK(mode):
            raise VineyardDaemonError(
                f"vineyardd IPC socket path {sock} exists and is not a socket; move it away or choose "
                "another --socket / --runtime-dir"
            )
        if mode is not None and socket_answers(sock):
            if pid:
                stop = f"stop it first (`fluid-airflow vineyard stop --runtime-dir {self.runtime_dir}`)"
                owner = f"vineyardd pid {pid}"
            else:  # not this runtime dir's: its own runtime dir (unknown here) is where to stop it
                stop = "stop it where it was started"
                owner = f"a process not started by fluid-airflow from {self.runtime_dir}"
            raise SocketInUseError(
                f"vineyardd IPC socket {sock} is already served by {owner}; use it as is, {stop}, or "
                "choose another --socket / --runtime-dir"
            )
        if pid is not None:
            raise SocketInUseError(
                f"vineyardd pid {pid} for socket {sock} is alive but its socket does not answer (starting, "
                f"hung or socket deleted); stop it first (`fluid-airflow vineyard stop --runtime-dir "
                f"{self.runtime_dir}`)"
            )
        if mode is not None:
            log.warning("removing stale vineyardd socket %s: nothing answers on it (a dead daemon's)", sock)
            sock.unlink(missing_ok=True)
        self.files.remove()

    def _spawn(self, argv: list[str], sock: Path) -> subprocess.Popen[bytes]:
        if sock.parent != self.runtime_dir:
            private_dir.ensure(sock.parent, self.socket_group)
        self.files.rotate_log()
        self._process = daemon_process.spawn(argv, self.log_file, self.runtime_dir)
        return self._process

    def _wait_ready(self, process: subprocess.Popen[bytes], sock: Path, timeout: float) -> None:
        """Wait for the socket and make it private; kill the daemon on any failure, Ctrl-C included."""
        try:
            failure = daemon_process.wait_ready(process, sock, timeout)
            if failure is not None:
                raise VineyardDaemonError(
                    f"vineyardd (pid {process.pid}, {daemon_process.program(process)}) {failure}; it was "
                    f"killed. Fix the cause shown in its log {self.log_file} (last lines below) and start "
                    f"again, or raise --timeout.\n{self.files.log_tail()}"
                )
            private_dir.restrict_socket(sock, self.socket_group)
        except BaseException:  # never leave a half-started daemon behind
            daemon_process.kill(process, sock)
            self.files.remove()
            raise

    # -- stop ----------------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> bool:
        """Stop our vineyardd: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

        Only a process whose command line contains the socket path is signalled (psutil), so a
        stale pid file never kills an unrelated process. Pid and state files are removed, and the
        socket file too if vineyardd left it behind (it does after SIGKILL).

        :returns: True if a daemon was stopped, False if none was running (leftover files are removed).
        :raises VineyardDaemonError: the process survived SIGKILL, or we may not signal it.
        """
        with self.files.locked():
            sock = self.socket_path
            pid = self._our_pid(sock)
            if pid is not None:
                daemon_process.terminate(pid, sock, timeout)
                if self._process is not None and self._process.pid == pid:
                    self._process.poll()  # let Popen know its child is gone
            if sock.exists():
                daemon_process.remove_dead_socket(sock)
            self.files.remove()
        if pid is None:
            return False
        log.info("vineyardd pid %s stopped", pid)
        return True

    # -- status --------------------------------------------------------------------------------
    def status(self) -> DaemonStatus:
        """Current state; a live socket is queried with a vineyard IPC client (``client.status``)."""
        state = self.files.read_state()
        sock = self.socket_path
        pid = self._our_pid(sock)
        try:
            numbers: dict[str, int | None] = dict(query_instance(sock))
            running = True
        except VineyardConnectionError:
            numbers = {"memory_usage": None, "memory_limit": None, "instance_id": None}
            running = False
        return DaemonStatus(
            running=running,
            pid=pid,
            socket=str(sock),
            size_bytes=state.get("size_bytes") if pid else None,
            size=state.get("size") if pid else None,
            started_at=state.get("started_at") if pid else None,
            log_file=str(self.log_file),
            **numbers,
        )


__all__ = [
    "DaemonStatus",
    "LocalVineyardd",
]
