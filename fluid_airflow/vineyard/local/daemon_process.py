"""Process control of one local vineyardd: its command line, spawn, readiness, identity and signals.

Facts relied on (docs/design.md §7 and §11; v6d ``src/server/util/spec_resolvers.cc`` @ v0.24.2):
RPC is on by default on 0.0.0.0 without authentication and there is no bind-address flag; SIGTERM
exits cleanly in ~10 ms and removes the socket; after SIGKILL the socket file stays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from fluid_airflow.exceptions import VineyardConnectionError, VineyardDaemonError
from fluid_airflow.vineyard.local.resources import (
    MAX_SOCKET_PATH_BYTES,
    query_instance,
    socket_answers,
    wait_for_exit,
)

log = logging.getLogger(__name__)


def serving_pid(socket: Path, recorded: int | None) -> int | None:
    """Pid of the live vineyardd serving ``socket``: ``recorded`` if it is that, else by scanning processes.

    A pid only counts when that process's command line contains ``socket``, so a reused pid is
    never signalled.
    """
    wanted = {str(socket), f"--socket={socket}", f"-socket={socket}"}

    def serves(proc: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return proc.status() != psutil.STATUS_ZOMBIE and bool(wanted & set(proc.cmdline()))
        return False

    if recorded is not None and psutil.pid_exists(recorded) and serves(psutil.Process(recorded)):
        return recorded
    for proc in psutil.process_iter(["name"]):
        if "vineyardd" in (proc.info["name"] or "") and serves(proc):
            return proc.pid
    return None


def check_socket_path(sock: Path) -> None:
    """Refuse a socket path longer than a UNIX socket address holds (vineyardd would fail obscurely)."""
    encoded = len(os.fsencode(sock))
    if encoded > MAX_SOCKET_PATH_BYTES:
        raise VineyardDaemonError(
            f"vineyardd IPC socket path {sock} is {encoded} bytes, longer than the "
            f"{MAX_SOCKET_PATH_BYTES} bytes a UNIX socket address can hold; use a shorter runtime dir "
            "(--runtime-dir or AIRFLOW__FLUID__RUNTIME_DIR, e.g. /tmp/fluid-airflow) or a shorter socket"
        )


def rpc_args(rpc_port: int | None, allow_public_rpc: bool) -> list[str]:
    """vineyardd's RPC flags: ``--norpc`` unless a port is given and public RPC is opted into."""
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


def spawn(argv: list[str], log_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Run ``argv`` detached, its output in ``log_file``.

    Own session: no SIGINT/SIGHUP from the caller's terminal, so it outlives the caller.
    ``GLOG_logtostderr=1``: its log goes to ``log_file`` instead of glog files in /tmp.
    """
    with open(log_file, "wb") as log_handle:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "GLOG_logtostderr": "1"},
            start_new_session=True,
        )


def wait_ready(process: subprocess.Popen[bytes], sock: Path, timeout: float) -> str | None:
    """Wait until ``sock`` answers a vineyard client handshake.

    :returns: None when ready, else why not (the process exited, or the time ran out).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with code {process.returncode} before its socket answered"
        # Poll the raw socket cheaply, then prove it is vineyardd with one client handshake.
        if socket_answers(sock, timeout=0.5):
            try:
                query_instance(sock)
                return None
            except VineyardConnectionError:
                pass
        time.sleep(0.02)
    return f"did not answer on {sock} within {timeout:g} s"


def program(process: subprocess.Popen[bytes]) -> str:
    """The executable ``process`` runs, for messages."""
    args = process.args  # start() passes a list; a str, bytes or path would be the program itself
    return os.fsdecode(args if isinstance(args, (str, bytes, os.PathLike)) else args[0])


def kill(process: subprocess.Popen[bytes], sock: Path) -> None:
    """SIGKILL ``process``'s session and remove its socket unless someone else serves it meanwhile."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # its own session: take any children too
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)
    remove_dead_socket(sock)


def remove_dead_socket(sock: Path) -> None:
    """Remove ``sock`` if nothing answers on it (vineyardd leaves it behind after SIGKILL)."""
    if not socket_answers(sock):  # never delete a socket someone else serves meanwhile
        sock.unlink(missing_ok=True)


def terminate(pid: int, sock: Path, timeout: float) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` seconds, then SIGKILL.

    :raises VineyardDaemonError: the process survived SIGKILL, or we may not signal it.
    """
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


__all__ = [
    "check_socket_path",
    "kill",
    "program",
    "remove_dead_socket",
    "rpc_args",
    "serving_pid",
    "spawn",
    "terminate",
    "wait_ready",
]
