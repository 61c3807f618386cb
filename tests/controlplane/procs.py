"""Daemons of the test control plane: started in their own session, stopped by process id (and that session's
process group, which holds the helpers they spawn, e.g. Fluid's ``ddc-helm`` calls)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ControlPlaneError(RuntimeError):
    """A control-plane daemon failed to start or stay up; the message names it and the tail of its log."""


@dataclass
class Daemon:
    """One process with its log file; ``stop`` ends it and its process group by id."""

    name: str
    argv: Sequence[str]
    log: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> Daemon:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check(self) -> None:
        """Raise ControlPlaneError if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} (pid {self.pid}) exited with {self.proc.returncode}; "
                f"log {self.log}:\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group led by our pid, then SIGKILL what is left after ``timeout`` seconds."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the daemon leads its own group
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                self.proc.poll()
                time.sleep(0.05)
            if not _group_alive(pgid):
                break
        self.proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Our direct child may be a zombie until reaped; killpg(0) still succeeds for it.
    return any(
        _pgid_of(int(p)) == pgid and not _is_zombie(int(p)) for p in os.listdir("/proc") if p.isdigit()
    )


def _pgid_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return -1


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def wait_until(what: str, ready: Callable[[], bool], timeout: float, daemons: Sequence[Daemon] = ()) -> None:
    """Poll ``ready`` every 0.2 s until it returns True; raise ControlPlaneError naming ``what`` after
    ``timeout`` seconds, or at once when one of ``daemons`` exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for daemon in daemons:
            daemon.check()
        try:
            if ready():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    logs = "\n".join(f"--- {d.name} ({d.log}):\n{d.tail()}" for d in daemons)
    raise ControlPlaneError(f"{what} not ready after {timeout:.0f}s (last error: {last!r})\n{logs}")
