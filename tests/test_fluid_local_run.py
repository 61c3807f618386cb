"""The local @task.fluid runner: a fork of the task process (and the fresh-interpreter fallback)
runs the function, streams its output, stores its result, reports failures by exit code."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from fluid_airflow.runner import local_run
from fluid_airflow.vineyard.data.reference import is_reference

RUNNERS = [local_run.run_forked, local_run.run_subprocess]

SOURCE = """
def step(n, pause):
    import os, sys, time
    import numpy as np
    print("step: first line", flush=False)
    time.sleep(pause)
    print("step: to stderr", file=sys.stderr)
    if n < 0:
        raise ValueError(f"negative n {n}")
    print("step: env", os.environ.get("STEP_SETTING"))
    return np.arange(float(n))
"""


def _spec(n: int, pause: float) -> dict:
    from airflow.sdk.serde import serialize

    return {
        "function": "step",
        "source": SOURCE,
        "inputs": serialize({"args": [n, pause], "kwargs": {}}),
        "scope": {"dag_id": "local_run", "run_id": f"r-{time.time_ns()}", "task_id": "step", "map_index": -1},
        "multiple_outputs": False,
        "dataset": "default/local-run",
    }


def _env(socket: str | Path) -> dict[str, str]:
    return {**os.environ, "VINEYARD_IPC_SOCKET": str(socket), "STEP_SETTING": "from-env-vars"}


@pytest.mark.parametrize("start", RUNNERS, ids=["forked", "subprocess"])
def test_result_is_stored_and_output_streams_while_running(start, vineyardd, vineyard_client, tmp_path):
    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    seen: list[tuple[float, str]] = []
    pids: list[int] = []
    output = tmp_path / "return.json"
    code = start(
        _spec(5, 2.0),
        _env(vineyardd.socket_path),
        output,
        lambda s: seen.append((time.monotonic(), s)),
        pids.append,
    )
    ended = time.monotonic()
    assert code == 0, seen
    lines = [line for _, line in seen]
    first = next(t for t, line in seen if line == "step: first line")
    assert ended - first > 1.5, seen  # logged while the function still slept, not at its end
    assert "step: to stderr" in lines and "step: env from-env-vars" in lines
    import json

    value = json.loads(output.read_text())
    assert is_reference(value)
    from collections import namedtuple

    got = VineyardXComBackend.deserialize_value(namedtuple("R", ["value"])(value))
    assert got.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len(pids) == 1 and not psutil.pid_exists(pids[0])  # reaped: nothing left running


@pytest.mark.parametrize("start", RUNNERS, ids=["forked", "subprocess"])
def test_exception_of_the_function_fails_with_its_traceback(start, vineyardd, tmp_path):
    seen: list[str] = []
    output = tmp_path / "return.json"
    assert start(_spec(-1, 0), _env(vineyardd.socket_path), output, seen.append) == 1
    text = "\n".join(seen)
    assert "Traceback" in text and "ValueError: negative n -1" in text, text
    assert not output.exists()


@pytest.mark.parametrize("start", RUNNERS, ids=["forked", "subprocess"])
def test_missing_vineyardd_is_the_preflight_exit_code(start, tmp_path):
    seen: list[str] = []
    code = start(_spec(1, 0), _env(tmp_path / "no.sock"), tmp_path / "return.json", seen.append)
    assert code == 3
    assert any("preflight failed for Dataset default/local-run" in line for line in seen), seen


def test_forked_child_cannot_use_the_supervisor_channel(vineyardd, tmp_path, monkeypatch):
    """A second writer on the task runner's supervisor socket would corrupt it: the child drops it."""
    from airflow.sdk.execution_time import task_runner

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", object(), raising=False)
    spec = _spec(0, 0)
    spec["source"] = (
        "def step(n, pause):\n"
        "    from airflow.sdk.execution_time import task_runner\n"
        "    print('comms:', hasattr(task_runner, 'SUPERVISOR_COMMS'))\n"
        "    return n\n"
    )
    seen: list[str] = []
    code = local_run.run_forked(spec, _env(vineyardd.socket_path), tmp_path / "r.json", seen.append)
    assert code == 0 and "comms: False" in seen, seen
    assert hasattr(task_runner, "SUPERVISOR_COMMS")  # the parent keeps its own


def test_killed_child_reports_the_signal(vineyardd, tmp_path):
    spec = _spec(1, 60)

    def kill(pid: int) -> None:
        time.sleep(0.5)
        os.kill(pid, 9)

    started = time.monotonic()
    code = local_run.run_forked(spec, _env(vineyardd.socket_path), tmp_path / "r.json", lambda s: None, kill)
    assert code == -9 and time.monotonic() - started < 30
    assert sys.stdout is sys.__stdout__ or sys.stdout is not None  # the parent's streams are untouched


@pytest.fixture
def warm_runner(vineyardd):
    """A warm runner on the session's vineyardd, in a short folder; stopped and checked after."""
    import shutil
    import tempfile

    from fluid_airflow.runner import warm

    folder = Path(tempfile.mkdtemp(prefix="fw-", dir="/tmp"))
    pid = warm.start(folder, str(vineyardd.socket_path))
    try:
        assert warm.wait_ready(folder, timeout=120), (folder / warm.LOG_NAME).read_text()
        yield folder
    finally:
        warm.stop(folder)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        shutil.rmtree(folder, ignore_errors=True)


def _warm(folder: Path):
    from fluid_airflow.runner import warm

    def start(spec, env, output, log_line, on_start=lambda pid: None):
        code = warm.run_warm(folder, spec, env, output, log_line, on_start)
        assert code is not None, "the warm runner did not answer"
        return code

    return start


def test_warm_runner_streams_stores_and_fails_like_a_fresh_process(
    warm_runner, vineyardd, vineyard_client, tmp_path
):
    run = _warm(warm_runner)
    for name in ("ok", "fails", "preflight"):
        (tmp_path / name).mkdir()
    test_result_is_stored_and_output_streams_while_running(run, vineyardd, vineyard_client, tmp_path / "ok")
    test_exception_of_the_function_fails_with_its_traceback(run, vineyardd, tmp_path / "fails")
    test_missing_vineyardd_is_the_preflight_exit_code(run, tmp_path / "preflight")


def test_warm_runner_kills_the_child_of_a_task_that_went_away(warm_runner, vineyardd, tmp_path):
    """The task process dies (SIGKILL by the supervisor): its child in the runner dies too."""
    import multiprocessing

    from fluid_airflow.runner import warm

    started = multiprocessing.get_context("fork").Queue()

    def task() -> None:
        warm.run_warm(
            warm_runner, _spec(1, 120), _env(vineyardd.socket_path), tmp_path / "r.json", print, started.put
        )

    proc = multiprocessing.get_context("fork").Process(target=task)
    proc.start()
    child = started.get(timeout=60)
    assert psutil.pid_exists(child)
    os.kill(proc.pid, 9)
    proc.join(10)
    deadline = time.monotonic() + 10
    while (
        psutil.pid_exists(child)
        and psutil.Process(child).status() != "zombie"
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"


def test_no_warm_runner_means_none(tmp_path):
    from fluid_airflow.runner import warm

    assert warm.run_warm(tmp_path, _spec(1, 0), {}, tmp_path / "r.json", print) is None
