"""A single-node vineyardd kept in a runtime folder: start, stop, status.

Facts relied on (docs/design.md §7 and §11; v6d ``src/server/util/spec_resolvers.cc`` @ v0.24.2): the
binary ships in the ``vineyard-bdist`` wheel as ``vineyard/bdist/vineyardd``; ``--meta local`` needs
no etcd; RPC is on by default on 0.0.0.0 without authentication and there is no bind-address flag;
SIGTERM exits cleanly in ~10 ms and removes the socket; after SIGKILL the socket file stays.
``vineyard.deploy.local.start_vineyardd`` / ``try_init`` are not used: they default to etcd, take
~60 s to exit and tie the daemon to the calling interpreter.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from fluid_airflow.exceptions import SocketInUseError, VineyardConnectionError, VineyardDaemonError
from fluid_airflow.vineyard import private_dir
from fluid_airflow.vineyard.resources import (
    MAX_SOCKET_PATH_BYTES,
    check_memory,
    find_vineyardd,
    memory_limits,
    parse_size,
    query_instance,
    socket_answers,
    wait_for_exit,
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
        self.pid_file = self.runtime_dir / "vineyardd.pid"
        self.state_file = self.runtime_dir / "vineyardd.json"
        self.log_file = self.runtime_dir / "vineyardd.log"
        self._lock_file = self.runtime_dir / "vineyardd.lock"
        self._process: subprocess.Popen[bytes] | None = None

    # -- files ---------------------------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        """The IPC socket: given, else recorded at start, else ``<runtime_dir>/vineyard.sock``."""
        if self._socket is not None:
            return self._socket
        recorded = self._read_state().get("socket")
        return Path(recorded) if recorded else self.runtime_dir / "vineyard.sock"

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _write_atomic(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # readers never see half a file

    def _remove_files(self) -> None:
        for path in (self.pid_file, self.state_file):
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir.ensure(self.runtime_dir, self.socket_group)
        with open(self._lock_file, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            yield

    # -- process identity ----------------------------------------------------------------------
    def _our_pid(self, socket: Path) -> int | None:
        """Pid of the live vineyardd serving ``socket``: from the pid file, else by scanning processes.

        A pid only counts when that process's command line contains ``socket``, so a reused pid is
        never signalled.
        """
        wanted = {str(socket), f"--socket={socket}", f"-socket={socket}"}

        def serves(proc: psutil.Process) -> bool:
            with contextlib.suppress(psutil.Error):
                return proc.status() != psutil.STATUS_ZOMBIE and bool(wanted & set(proc.cmdline()))
            return False

        pid = self._read_pid()
        if pid is not None and psutil.pid_exists(pid) and serves(psutil.Process(pid)):
            return pid
        for proc in psutil.process_iter(["name"]):
            if "vineyardd" in (proc.info["name"] or "") and serves(proc):
                return proc.pid
        return None

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
        timeout: float = 30.0,
    ) -> DaemonStatus:
        """Start vineyardd in the background and wait until its socket answers a vineyard client.

        Every check runs before anything is spawned. The daemon is started with ``--meta local
        --norpc`` (unless told otherwise) in its own session (it outlives the caller) with
        ``GLOG_logtostderr=1`` so its log goes to ``log_file`` instead of glog files in /tmp.

        :param size: shared memory, see :func:`~fluid_airflow.vineyard.resources.parse_size`; default
            ``[fluid] local_vineyard_size``. Passed to vineyardd as a byte count.
        :param rpc_port: also serve RPC on this TCP port. vineyardd then listens on **all interfaces,
            unauthenticated**; refused unless ``allow_public_rpc`` is True.
        :param etcd_endpoint: keep metadata in the etcd at this URL (``http://127.0.0.1:2379``,
            ``--meta etcd``) instead of ``--meta local``: what a VineyardRuntime's cache nodes do, so
            names of persisted objects are visible to every vineyardd on that etcd.
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
        rpc_args = self._rpc_args(rpc_port, allow_public_rpc)
        encoded = len(os.fsencode(sock))
        if encoded > MAX_SOCKET_PATH_BYTES:
            raise VineyardDaemonError(
                f"vineyardd IPC socket path {sock} is {encoded} bytes, longer than the "
                f"{MAX_SOCKET_PATH_BYTES} bytes a UNIX socket address can hold; use a shorter runtime dir "
                "(--runtime-dir or AIRFLOW__FLUID__RUNTIME_DIR, e.g. /tmp/fluid-airflow) or a shorter socket"
            )
        binary = self._binary or find_vineyardd()
        check_memory(size_bytes, memory_limits(), size_text)
        with self._locked():
            self._refuse_or_clean(sock)
            argv = [os.fspath(binary), "--socket", str(sock), "--size", str(size_bytes)]
            meta = ["etcd", "--etcd_endpoint", etcd_endpoint] if etcd_endpoint else ["local"]
            argv += ["--meta", *meta]
            argv += rpc_args
            if sock.parent != self.runtime_dir:
                private_dir.ensure(sock.parent, self.socket_group)
            if self.log_file.exists():
                os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
            with open(self.log_file, "wb") as log_handle:
                self._process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_handle,
                    stderr=subprocess.STDOUT,
                    cwd=self.runtime_dir,
                    env={**os.environ, "GLOG_logtostderr": "1"},
                    start_new_session=True,  # no SIGINT/SIGHUP from the caller's terminal
                )
            pid = self._process.pid
            self._write_atomic(self.pid_file, f"{pid}\n")
            state = {
                "socket": str(sock),
                "size": size_text,
                "size_bytes": size_bytes,
                "pid": pid,
                "started_at": time.time(),
                "argv": argv,
                "rpc_port": rpc_port,
                "etcd_endpoint": etcd_endpoint,
            }
            self._write_atomic(self.state_file, json.dumps(state, indent=2) + "\n")
            try:
                self._wait_ready(self._process, sock, timeout)
                private_dir.restrict_socket(sock, self.socket_group)
            except BaseException:  # also Ctrl-C: never leave a half-started daemon behind
                self._kill(self._process, sock)
                raise
        log.info("vineyardd started: pid %s, socket %s, size %s (%s bytes)", pid, sock, size_text, size_bytes)
        return self.status()

    @staticmethod
    def _rpc_args(rpc_port: int | None, allow_public_rpc: bool) -> list[str]:
        if rpc_port is None:
            return ["--norpc"]
        if isinstance(rpc_port, bool) or not isinstance(rpc_port, int) or not 0 < rpc_port < 65536:
            raise VineyardDaemonError(f"vineyardd RPC port {rpc_port!r} is not a TCP port (1-65535)")
        if not allow_public_rpc:
            raise VineyardDaemonError(
                f"vineyardd RPC on port {rpc_port} refused: vineyardd has no bind-address flag and would "
                "listen on 0.0.0.0, all interfaces, without authentication. Pass allow_public_rpc=True "
                "(CLI: --allow-public-rpc) if this host's network is trusted, or drop the RPC port"
            )
        log.warning(
            "vineyardd RPC enabled: port %s listens on ALL interfaces (0.0.0.0) WITHOUT authentication; "
            "anyone who can reach this host can read, replace and delete every object",
            rpc_port,
        )
        return ["--rpc", "--rpc_socket_port", str(rpc_port)]

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
            owner = f"vineyardd pid {pid}" if pid else "a process not started by fluid-airflow"
            raise SocketInUseError(
                f"vineyardd IPC socket {sock} is already served by {owner}; use it as is, stop it first "
                f"(`fluid-airflow vineyard stop --runtime-dir {self.runtime_dir}`), or choose another "
                "--socket / --runtime-dir"
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
        self._remove_files()

    def _wait_ready(self, process: subprocess.Popen[bytes], sock: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        failure = ""
        while time.monotonic() < deadline:
            if process.poll() is not None:
                failure = f"exited with code {process.returncode} before its socket answered"
                break
            # Poll the raw socket cheaply, then prove it is vineyardd with one client handshake.
            if socket_answers(sock, timeout=0.5):
                try:
                    query_instance(sock)
                    return
                except VineyardConnectionError:
                    pass
            time.sleep(0.02)
        else:
            failure = f"did not answer on {sock} within {timeout:g} s"
        args = process.args  # start() passes a list; a str, bytes or path would be the program itself
        program = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
        raise VineyardDaemonError(
            f"vineyardd (pid {process.pid}, {os.fsdecode(program)}) {failure}; it was killed. "
            f"Fix the cause shown in its log {self.log_file} (last lines below) and start again, or "
            f"raise --timeout.\n{self._log_tail()}"
        )

    def _kill(self, process: subprocess.Popen[bytes], sock: Path) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own session: take any children too
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if not socket_answers(sock):  # never delete a socket someone else serves meanwhile
            sock.unlink(missing_ok=True)
        self._remove_files()

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    # -- stop ----------------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> bool:
        """Stop our vineyardd: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

        Only a process whose command line contains the socket path is signalled (psutil), so a
        stale pid file never kills an unrelated process. Pid and state files are removed, and the
        socket file too if vineyardd left it behind (it does after SIGKILL).

        :returns: True if a daemon was stopped, False if none was running (leftover files are removed).
        :raises VineyardDaemonError: the process survived SIGKILL, or we may not signal it.
        """
        with self._locked():
            sock = self.socket_path
            pid = self._our_pid(sock)
            if pid is None:
                if sock.exists() and not socket_answers(sock):
                    sock.unlink(missing_ok=True)
                self._remove_files()
                return False
            proc = psutil.Process(pid)
            try:
                proc.terminate()
                if not wait_for_exit(proc, timeout):
                    log.warning("vineyardd pid %s ignored SIGTERM for %g s; sending SIGKILL", pid, timeout)
                    proc.kill()
                    if not wait_for_exit(proc, 5):
                        raise VineyardDaemonError(
                            f"vineyardd pid {pid} (socket {sock}) survived SIGKILL for 5 s (stuck in the "
                            f"kernel?); check `ps -o stat,wchan -p {pid}` and stop it by hand"
                        )
            except psutil.NoSuchProcess:
                pass
            except psutil.AccessDenied as exc:
                raise VineyardDaemonError(
                    f"vineyardd pid {pid} (socket {sock}) could not be stopped: {exc}; stop it as its owner "
                    f"(`kill {pid}`)"
                ) from exc
            if self._process is not None and self._process.pid == pid:
                self._process.poll()  # let Popen know its child is gone
            if sock.exists() and not socket_answers(sock):
                sock.unlink(missing_ok=True)
            self._remove_files()
        log.info("vineyardd pid %s stopped", pid)
        return True

    # -- status --------------------------------------------------------------------------------
    def status(self) -> DaemonStatus:
        """Current state; a live socket is queried with a vineyard IPC client (``client.status``)."""
        state = self._read_state()
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
