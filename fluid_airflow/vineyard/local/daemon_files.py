"""The runtime folder of one local vineyardd: its pid, state, log and lock files.

Kept apart from process control (:mod:`.daemon_process`) because these files are the only state
shared between separate ``fluid-airflow vineyard start|stop|status`` invocations: everything a
later call knows about the daemon (socket, size, start time) is read back from here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fluid_airflow.vineyard.local import private_dir


class DaemonFiles:
    """``vineyardd.pid``, ``vineyardd.json``, ``vineyardd.log`` and ``vineyardd.lock`` in ``runtime_dir``.

    :param runtime_dir: the folder (absolute); made private on first lock (:mod:`.private_dir`).
    :param socket_group: group also allowed into the folder, or None.
    """

    def __init__(self, runtime_dir: Path, socket_group: str | None) -> None:
        self.runtime_dir = runtime_dir
        self.socket_group = socket_group
        self.pid_file = runtime_dir / "vineyardd.pid"
        self.state_file = runtime_dir / "vineyardd.json"
        self.log_file = runtime_dir / "vineyardd.log"
        self.lock_file = runtime_dir / "vineyardd.lock"

    def read_state(self) -> dict[str, Any]:
        """The state recorded at start, or ``{}`` when there is none (or it is unreadable)."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def read_pid(self) -> int | None:
        """The pid recorded at start (not verified: see :func:`.daemon_process.serving_pid`)."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def record(self, pid: int, state: dict[str, Any]) -> None:
        """Write the pid file, then the state file (each atomically)."""
        _write_atomic(self.pid_file, f"{pid}\n")
        _write_atomic(self.state_file, json.dumps(state, indent=2) + "\n")

    def remove(self) -> None:
        """Remove the pid and state files (the log stays for the next start to rotate)."""
        for path in (self.pid_file, self.state_file):
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise start/stop across processes (``flock`` on ``vineyardd.lock``)."""
        private_dir.ensure(self.runtime_dir, self.socket_group)
        with open(self.lock_file, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            yield

    def rotate_log(self) -> None:
        """Keep the previous daemon's log as ``vineyardd.log.1``."""
        if self.log_file.exists():
            os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` of the log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # readers never see half a file


__all__ = ["DaemonFiles"]
