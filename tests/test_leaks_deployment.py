"""The kill, stop and foreign-reference cases under a real scheduler (``tests/deployment.py``):
task processes supervised by Airflow, runs triggered, cleared and edited through the REST API.

One deployment of its own (a 2 GiB vineyardd nothing else uses, 3 s vineyard call timeout,
runs released at run end), so every test can end with 0 bytes and 0 objects in vineyardd.
"""

from __future__ import annotations

import json
import os
import signal
import time
from urllib.parse import quote

import pytest
from conftest import held_in

from fluid_airflow.vineyard.lifecycle.release import run_objects

pytestmark = pytest.mark.deployment

MiB = 2**20
ROWS = 48 * MiB // 8


@pytest.fixture(scope="module")
def dep(make_deployment):
    return make_deployment(AIRFLOW__FLUID__VINEYARD_TIMEOUT="3")


def _held(dep) -> tuple[int, int, int]:
    return held_in(dep.vineyardd)


def _wait(what, check, timeout: float = 120.0, interval: float = 0.001):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _mid_put(dep, pid_file) -> int:
    """The producer's pid, once its put is half-way: its 768 MiB blob allocated, not yet written
    (the first try pauses there, tests/dags/fa_big_put.py)."""
    pid = int(_wait(f"{pid_file}", lambda: pid_file.exists() and pid_file.read_text(), interval=0.01))
    client = dep.vineyard_client()
    _wait("a put half-way", lambda: 768 * MiB <= int(client.status.memory_usage) <= 800 * MiB)
    return pid


def _released_and_collected(dep, dag_id: str, run_id: str) -> None:
    """Run end released the run's names; gc frees what no name reaches; nothing is left."""
    _wait("run-end release", lambda: not run_objects(dep.vineyard_client(), dag_id, run_id), 60, 0.5)
    done = dep.airflow("fluid-airflow", "gc", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["unnamed"]["in_flight"] == 0
    assert _held(dep) == (0, 0, 0)


def test_task_killed_mid_put_retries_and_leaves_nothing(dep, tmp_path):
    run_id = dep.trigger("fa_big_put", conf={"pid_dir": str(tmp_path)})
    os.kill(_mid_put(dep, tmp_path / "1"), signal.SIGKILL)
    assert dep.wait_run("fa_big_put", run_id, timeout=300) == "success", dep.task_states("fa_big_put", run_id)
    assert dep.xcom_rows("fa_big_put", run_id)[("consume", -1, "return_value")] == 15.0 + ROWS
    _released_and_collected(dep, "fa_big_put", run_id)


def test_vineyardd_stopped_mid_put_times_out_retries_and_leaves_nothing(dep, tmp_path):
    run_id = dep.trigger("fa_big_put", conf={"pid_dir": str(tmp_path), "pause": 2})
    _mid_put(dep, tmp_path / "1")
    vineyardd = dep.vineyardd.pid()
    os.kill(vineyardd, signal.SIGSTOP)
    try:
        # The first try fails on its own within its call timeout (3 s per call).
        dep.wait_task("fa_big_put", run_id, "produce", ("up_for_retry", "failed"), timeout=120)
    finally:
        os.kill(vineyardd, signal.SIGCONT)
    assert "VineyardTimeoutError" in dep.task_log("fa_big_put", run_id, "produce", try_number=1)
    assert dep.wait_run("fa_big_put", run_id, timeout=300) == "success", dep.task_states("fa_big_put", run_id)
    _released_and_collected(dep, "fa_big_put", run_id)


def test_clearing_a_task_whose_row_was_edited_to_another_dags_reference_keeps_that_object(
    make_deployment, tmp_path
):
    dep = make_deployment()  # its own: nothing of the kill and stop tests above may interfere
    go = tmp_path / "go"
    other = dep.trigger("fa_hold", conf={"release_file": str(go)})
    dep.wait_task("fa_hold", other, "hold", ("running",))
    assert dep.wait_task("fa_hold", other, "produce") == "success"
    theirs = dep.xcom_rows("fa_hold", other)[("produce", -1, "return_value")]
    ours = dep.trigger("fa_retry")
    assert dep.wait_run("fa_retry", ours) == "success", dep.failed_logs("fa_retry", ours)
    # Someone allowed to edit fa_retry copies fa_hold's reference into fa_retry's row...
    path = (
        f"/api/v2/dags/fa_retry/dagRuns/{quote(ours, safe='')}/taskInstances/flaky/xcomEntries/return_value"
    )
    status, body = dep.request("PATCH", path, {"value": theirs, "map_index": -1})
    assert status == 200, body
    # ... and clears the task: Airflow purges the row's object before the task runs again.
    dep.clear("fa_retry", ours, ["flaky"])
    dep.wait_task("fa_retry", ours, "flaky", ("running", "success", "failed", "up_for_retry"))
    assert dep.wait_run("fa_retry", ours) == "success", dep.failed_logs("fa_retry", ours)
    assert "belongs to another XCom" in dep.task_log("fa_retry", ours, "flaky", try_number=3)
    go.touch()
    assert dep.wait_run("fa_hold", other) == "success", dep.task_states("fa_hold", other)
    assert dep.xcom_rows("fa_hold", other)[("consume", -1, "return_value")] == 500_000.0
    _released_and_collected(dep, "fa_hold", other)
