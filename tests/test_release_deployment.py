"""The scheduler's run-end release under a real scheduler (``tests/deployment.py``).

The listener spawns ``fluid-airflow release`` as a child of the scheduler; it may start seconds
after the run ended. A run cleared in between must keep the objects its re-run puts (seen in
CI: a consumer of the re-run read a name the late release had just deleted). The deployment
keeps runs' objects for an hour, so the test drives the same command the listener spawns.
"""

from __future__ import annotations

import pytest

from fluid_airflow.vineyard.lifecycle.release import run_objects

pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def dep(make_deployment):
    return make_deployment(AIRFLOW__FLUID__KEEP_FOR="3600")


def test_a_late_run_end_release_leaves_a_cleared_and_rerun_runs_objects(dep):
    run_id = dep.trigger("fa_retry")
    assert dep.wait_run("fa_retry", run_id) == "success", dep.failed_logs("fa_retry", run_id)
    before = run_objects(dep.vineyard_client(), "fa_retry", run_id)
    assert before  # kept for an hour
    dep.clear("fa_retry", run_id, ["flaky"])  # clear number 0 -> 1
    dep.wait_task("fa_retry", run_id, "consume", ("queued", "running", "success", "failed", "up_for_retry"))
    assert dep.wait_run("fa_retry", run_id) == "success", dep.failed_logs("fa_retry", run_id)
    rerun = run_objects(dep.vineyard_client(), "fa_retry", run_id)
    assert set(rerun) == set(before) and rerun != before  # the same names, new objects

    # The release the first end spawned, arriving only now: it must see the clear and keep all.
    late = dep.airflow(
        "fluid-airflow", "release", "--dag-id", "fa_retry", "--run-id", run_id, "--if-clear-number", "0"
    )
    assert late.returncode == 0, late.stderr
    assert "released nothing" in late.stdout and "cleared" in late.stdout, late.stdout
    assert run_objects(dep.vineyard_client(), "fa_retry", run_id) == rerun

    # The release of the second end (clear number 1) frees them.
    done = dep.airflow(
        "fluid-airflow", "release", "--dag-id", "fa_retry", "--run-id", run_id, "--if-clear-number", "1"
    )
    assert done.returncode == 0 and f"released {len(rerun)} objects" in done.stdout, (
        done.stdout,
        done.stderr,
    )
    assert run_objects(dep.vineyard_client(), "fa_retry", run_id) == {}
