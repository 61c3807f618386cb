"""The warm runner of a local Dataset: a helper that has imported everything and forks per task.

A ``@task.fluid`` task process under Airflow's supervisor has Airflow imported, but not
vineyard, numpy, pandas and pyarrow: about 1 s of CPU per task (``python -X importtime``),
more on a loaded machine. The local backend therefore starts one helper per bound Dataset,
next to its vineyardd (:meth:`~fluid_airflow.fluid.local.LocalFluidClient.create` of the
runtime), and stops it before that vineyardd (``delete``): ``python -m
fluid_airflow.runner.warm <dataset folder>``. It imports once and listens on
``<folder>/warm.sock``. Per task (:func:`run_warm`), the task process sends the spec, the
environment and the write end of a pipe (``SCM_RIGHTS``, Python's ``socket.send_fds``); the
helper forks a child that runs :func:`fluid_airflow.runner.local_run.child_main` with that pipe
as stdout and stderr, so the task reads the function's output as it is printed, and answers
``{"pid": ...}`` then ``{"code": ...}``. The child connects to vineyardd after the fork. When
the task's connection closes early (the task was killed), the helper kills the child.

The helper is single-threaded (``selectors``), so forking it is safe; it exits on SIGTERM, and
by itself when its Dataset's folder or vineyardd socket disappears. Its command line names the
folder, as vineyardd's does, so leak checks find both.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOCKET_NAME = "warm.sock"
PID_NAME = "warm.pid"
LOG_NAME = "warm.log"
_LENGTH = struct.Struct("!Q")


def start(folder: Path, vineyard_socket: str) -> int:
    """Start the helper of the Dataset in ``folder`` (detached: it outlives the bind task);
    returns its pid. It answers once its imports are done (a few seconds); until then
    :func:`run_warm` returns None and the task forks itself instead."""
    from fluid_airflow.runner.local_run import runner_environment

    env = runner_environment({**os.environ, "VINEYARD_IPC_SOCKET": vineyard_socket})
    with open(folder / LOG_NAME, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fluid_airflow.runner.warm", str(folder)], env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    (folder / PID_NAME).write_text(str(process.pid))
    return process.pid


def stop(folder: Path, timeout: float = 10.0) -> None:
    """Stop the helper of ``folder`` (SIGTERM, SIGKILL after ``timeout`` s) and its children."""
    import psutil

    try:
        pid = int((folder / PID_NAME).read_text())
        helper = psutil.Process(pid)
        if str(folder) not in " ".join(helper.cmdline()):
            return  # the pid was reused by another process
        children = helper.children(recursive=True)
        helper.terminate()
        _, alive = psutil.wait_procs([helper], timeout=timeout)
        for proc in [*alive, *children]:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(children, timeout=timeout)
    except (FileNotFoundError, ValueError, psutil.Error):
        pass
    finally:
        for name in (PID_NAME, SOCKET_NAME):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()


def run_warm(
    folder: Path,
    spec: dict[str, Any],
    env: dict[str, str],
    output: Path,
    log_line: Callable[[str], None],
    on_start: Callable[[int], None] = lambda pid: None,
) -> int | None:
    """As :func:`~fluid_airflow.runner.local_run.run_forked`, in a fork of the helper.

    :returns: the child's exit code, or None when no helper answers on ``folder`` (not
        started, still importing, or gone): the caller runs the task another way.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(folder / SOCKET_NAME))
    except OSError:
        conn.close()
        return None
    with conn:
        read_fd, write_fd = os.pipe()
        body = json.dumps({"spec": spec, "env": env, "output": str(output)}).encode()
        try:
            socket.send_fds(conn, [_LENGTH.pack(len(body))], [write_fd])
        finally:
            os.close(write_fd)
        conn.sendall(body)
        replies = conn.makefile("rb")
        on_start(int(json.loads(replies.readline())["pid"]))
        with open(read_fd, "rb") as lines:
            for line in lines:
                log_line(line.decode(errors="replace").rstrip("\n"))
        answer = replies.readline()
        return int(json.loads(answer)["code"]) if answer else -signal.SIGKILL


def _serve(folder: Path) -> None:  # pragma: no cover - runs in the helper process
    from fluid_airflow._vineyard_import import install

    install()
    import numpy  # noqa: F401 - imported once here, for every task
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    import vineyard  # noqa: F401
    from airflow.sdk import serde  # noqa: F401

    from fluid_airflow.runner import local_run  # noqa: F401
    from fluid_airflow.vineyard import xcom  # noqa: F401

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    path = folder / SOCKET_NAME
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    children: dict[int, socket.socket] = {}  # pid -> the task's connection
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    vineyard_socket = Path(os.environ["VINEYARD_IPC_SOCKET"])
    try:
        while folder.exists() and vineyard_socket.exists():
            for key, _ in selector.select(timeout=0.2):
                if key.fileobj is server:
                    conn, _ = server.accept()
                    pid = _fork_task(conn, server)
                    if pid is None:
                        conn.close()
                        continue
                    children[pid] = conn
                    selector.register(conn, selectors.EVENT_READ, pid)
                else:  # the task closed its end early (killed): kill its child
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(key.data, signal.SIGKILL)
            _reap(children, selector)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fork_task(conn: socket.socket, server: socket.socket) -> int | None:  # pragma: no cover - helper
    """Read one request from ``conn`` and fork its child; returns the child's pid."""
    from fluid_airflow.runner import local_run

    conn.settimeout(30)
    try:
        header, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, 1)
        (length,) = _LENGTH.unpack(header)
        body = b""
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                raise ConnectionError("the task closed its connection")
            body += chunk
        request = json.loads(body)
    except (OSError, ValueError, struct.error):
        return None
    pid = os.fork()
    if pid == 0:
        server.close()
        conn.close()
        os._exit(local_run.child_main(request["spec"], request["env"], Path(request["output"]), fds[0]))
    os.close(fds[0])
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    return pid


def _reap(children: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:  # pragma: no cover
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            selector.unregister(conn)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            conn.close()


def wait_ready(folder: Path, timeout: float = 60.0) -> bool:
    """True once the helper of ``folder`` accepts connections (tests, benchmarks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(folder / SOCKET_NAME))
                return True
            except OSError:
                time.sleep(0.2)
    return False


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
