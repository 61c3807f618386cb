"""Run a ``@task.fluid`` spec on the local backend: in a fork of the (warm) task process.

A fresh interpreter per task re-imports Airflow, vineyard, pandas and pyarrow: about 1.1 s of
CPU, 3-4 s of wall time on a loaded 2-core machine (``python -X importtime``), for every task.
The task process has imported all of that already, so :func:`run_forked` forks it instead
(copy-on-write, a few milliseconds) and runs :func:`fluid_airflow.runner.task.execute` in
the child. This is the pattern Airflow's own task supervisor uses to start task processes:
import once, then ``os.fork()`` (task-sdk 1.3.2 ``execution_time/supervisor.py``,
``WatchedSubprocess.start``, which forks without ``exec`` on Linux).

The child keeps the semantics of the separate runner process:

- it gets its own environment (the task's ``env_vars``, ``VINEYARD_IPC_SOCKET``) and its own
  vineyard client, made after the fork (:meth:`~fluid_airflow.hooks.vineyard.VineyardHook.get_conn`
  never reuses a client made before a fork);
- its stdout and stderr (the function's prints, logging, tracebacks) go to a pipe the task
  process reads line by line into the task log while the function runs;
- it cannot talk to the task supervisor: the inherited supervisor channel is dropped
  (``task_runner.SUPERVISOR_COMMS``), as in a fresh interpreter, so the function has no
  Airflow DB or API access either way;
- its exit code says how it ended (0, 1 for an exception of the function, 3 when the
  preflight failed, ``-signal`` when killed), and it dies with the task process: it stays in
  the task's process group, which the supervisor signals on kill or timeout.

:func:`run_subprocess` is the fresh-interpreter path, kept for platforms without a safe
``fork()`` (macOS, where Airflow's supervisor also forks and ``exec``\\ s).
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Signals whose handlers the task runner installs; the child gets the default ones back.
_REPLACED_STREAMS: list[Any] = []
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)


def fork_supported() -> bool:
    """True where :func:`run_forked` is used: POSIX ``fork()`` without Objective-C (not macOS)."""
    return hasattr(os, "fork") and sys.platform != "darwin"


def run_forked(
    spec: dict[str, Any],
    env: dict[str, str],
    output: Path,
    log_line: Callable[[str], None],
    on_start: Callable[[int], None] = lambda pid: None,
) -> int:
    """Run ``spec`` in a forked child; return its exit code (negative: killed by that signal).

    :param spec: the runner spec (see :mod:`fluid_airflow.runner.task`).
    :param env: the child's whole environment.
    :param output: file the child writes the XCom value (JSON) to, on success only.
    :param log_line: called in this process with each line the child prints (no newline).
    :param on_start: called with the child's pid once it runs (to kill it on ``on_kill``).
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which leaves through os._exit
        os.close(read_fd)
        os._exit(child_main(spec, env, output, write_fd))
    os.close(write_fd)
    on_start(pid)
    try:
        with open(read_fd, "rb") as lines:
            for line in lines:  # logged as printed, like a pod's log
                log_line(line.decode(errors="replace").rstrip("\n"))
    finally:
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def child_main(
    spec: dict[str, Any], env: dict[str, str], output: Path, write_fd: int
) -> int:  # pragma: no cover
    """The child's whole life: detach from its parent, run the spec, return the exit code.

    ``write_fd`` becomes its stdout and stderr. Used here and by :mod:`fluid_airflow.runner.warm`.
    """
    try:
        for number in _RESET_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        # The task runner may have closed its standard fds, so the pipe can be fd 1 or 2 itself:
        # move it above them before making it both.
        high = fcntl.fcntl(write_fd, fcntl.F_DUPFD, 3)
        os.close(write_fd)
        os.dup2(high, 1)
        os.dup2(high, 2)
        os.close(high)
        # The task runner's own stream objects are kept alive: destroying one would close the fd
        # it owns, which is now the pipe. The child leaves through os._exit, never freeing them.
        _REPLACED_STREAMS.extend([sys.stdout, sys.stderr])
        # Unbuffered text streams on the pipe, as PYTHONUNBUFFERED=1 gives a fresh interpreter.
        sys.stdout = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False), write_through=True, line_buffering=True
        )
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False),
            write_through=True,
            line_buffering=True,
            errors="backslashreplace",
        )
        _detach_from_supervisor()
        os.environ.clear()
        os.environ.update(env)
    except BaseException:
        return 70  # EX_SOFTWARE: nothing can be reported; the parent logs the exit code
    try:
        from fluid_airflow.runner import task as runner

        return runner.execute(spec, output)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _detach_from_supervisor() -> None:  # pragma: no cover - child only
    """Drop the task runner's supervisor channel and send logging to stderr (the pipe).

    ``SUPERVISOR_COMMS`` is the task runner's socket to its supervisor (task-sdk 1.3.2
    ``execution_time/task_runner.py``); a second writer on it would corrupt its framing.
    """
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if task_runner is not None and comms is not None:
        del task_runner.SUPERVISOR_COMMS  # any use now fails at once, as in a fresh interpreter
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    try:
        import structlog

        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
            cache_logger_on_first_use=False,
        )
    except ImportError:
        pass


def run_subprocess(
    spec: dict[str, Any],
    env: dict[str, str],
    output: Path,
    log_line: Callable[[str], None],
    on_start: Callable[[int], None] = lambda pid: None,
) -> int:
    """As :func:`run_forked`, in a fresh interpreter (``python -m fluid_airflow.runner.task``)."""
    spec_file = output.with_name("spec.json")
    spec_file.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "fluid_airflow.runner.task", "--spec", str(spec_file)]
    process = subprocess.Popen(
        [*command, "--output", str(output)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    on_start(process.pid)
    assert process.stdout is not None
    with process.stdout:
        for line in process.stdout:
            log_line(line.decode(errors="replace").rstrip("\n"))
    return process.wait()


def runner_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment of the local runner subprocess, made from the task process's ``env``.

    Under a scheduler the task runs under the Task SDK supervisor, which blocks DB access by
    setting ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow-db-not-allowed:///`` in the task's
    environment (task-sdk 1.3.2 ``execution_time/supervisor.py``, ``block_orm_access``); a fresh
    interpreter importing ``airflow`` would then fail in ``settings.initialize()`` ->
    ``configure_orm()`` ("Could not parse SQLAlchemy URL"). The runner needs no DB, so it is
    started the way the standard provider starts its virtualenv scripts:
    ``PYTHON_OPERATORS_VIRTUAL_ENV_MODE=1`` makes ``settings.initialize()`` skip the ORM
    (airflow-core 3.3.2 ``airflow/settings.py``; providers-standard 1.21.0
    ``utils/python_virtualenv_script.jinja2``). ``_AIRFLOW_PROCESS_CONTEXT=server`` (inherited
    from the scheduler) is dropped so secrets are looked up without the metadata DB
    (``ensure_secrets_backend_loaded`` in the same supervisor module). ``PYTHONUNBUFFERED=1``
    makes the function's prints reach the task log as they happen.
    """
    cleaned = {k: v for k, v in env.items() if k != "_AIRFLOW_PROCESS_CONTEXT"}
    return {**cleaned, "PYTHON_OPERATORS_VIRTUAL_ENV_MODE": "1", "PYTHONUNBUFFERED": "1"}
