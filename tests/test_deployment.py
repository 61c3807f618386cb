"""DAGs run as users run them: a real Airflow deployment (``tests/deployment.py``), runs
triggered and cleared through the REST API, every task in its own supervised process."""

from __future__ import annotations

import time

import pytest

from fluid_airflow.vineyard.data.reference import is_reference

pytestmark = pytest.mark.deployment


def test_mapped_dag_through_every_pull_path(deployment):
    run_id = deployment.trigger("fa_mapped")
    assert deployment.wait_run("fa_mapped", run_id) == "success", deployment.task_states("fa_mapped", run_id)
    got = deployment.xcom_rows("fa_mapped", run_id)
    assert got[("consume_all", -1, "return_value")] == [1.0, 2.0, 3.0]
    assert got[("pull_paths", -1, "return_value")] == {"single": 2.0, "every": [1.0, 2.0, 3.0]}
    assert [got[("consume_one", i, "return_value")] for i in range(3)] == [1000.0, 2000.0, 3000.0]
    refs = [got[("produce", i, "return_value")] for i in range(3)]
    assert all(is_reference(r) for r in refs) and len({r["name"] for r in refs}) == 3


def test_every_type_round_trips_under_the_scheduler(deployment):
    # Each value pushed and pulled in task processes of their own, under the supervisor (no DB access):
    # every string flavour with nulls, object strings stored as a dictionary, decimals, polars, ...
    from test_dags import fa_types_kinds

    run_id = deployment.trigger("fa_types")
    assert deployment.wait_run("fa_types", run_id) == "success", deployment.failed_logs("fa_types", run_id)
    got = deployment.xcom_rows("fa_types", run_id)
    assert got[("check", -1, "return_value")] == dict.fromkeys(fa_types_kinds(), True)


def test_retried_task_succeeds_on_its_second_try(deployment):
    run_id = deployment.trigger("fa_retry")
    assert deployment.wait_run("fa_retry", run_id) == "success", deployment.task_states("fa_retry", run_id)
    got = deployment.xcom_rows("fa_retry", run_id)
    assert got[("consume", -1, "return_value")] == {"total": 7.0 * 250_000, "partial_try": 2.0}
    first_try = deployment.task_log("fa_retry", run_id, "flaky", try_number=1)
    assert "first try fails on purpose" in first_try
    # Try 2 starts by deleting try 1's XComs (BaseXCom.delete -> purge with a row of key and value only):
    # the backend knows whose they are, so it purges its own object without calling it foreign.
    second_try = deployment.task_log("fa_retry", run_id, "flaky", try_number=2)
    assert "belongs to another XCom" not in second_try, second_try


def test_demo_dag_succeeds_and_is_released_at_run_end(deployment):
    from fluid_airflow.vineyard.data.reference import VineyardReference
    from fluid_airflow.vineyard.lifecycle.release import run_objects

    dag_id = "flights_delay_regression"
    run_id = deployment.trigger(dag_id)
    assert deployment.wait_run(dag_id, run_id, timeout=600) == "success", deployment.task_states(
        dag_id, run_id
    )
    got = deployment.xcom_rows(dag_id, run_id)
    refs = [VineyardReference.from_json(v) for v in got.values() if is_reference(v)]
    assert {r.type for r in refs} >= {"pandas.DataFrame", "numpy.ndarray", "pyarrow.Table"}
    assert sum(r.bytes for r in refs) > 10_000_000  # the data went through Vineyard
    # Every consumer resolved its references in its own task process: the metrics are right.
    metrics = got[("report", -1, "return_value")]
    assert metrics["r2"] > 0.5 and 0 < metrics["rmse"] < 100
    assert "Arrival delay model: RMSE" in deployment.task_log(dag_id, run_id, "report")
    # [fluid] keep_for = 0 (the default): the scheduler's run-end listener released the run.
    client = deployment.vineyard_client()
    deadline = time.monotonic() + 60
    while run_objects(client, dag_id, run_id) and time.monotonic() < deadline:
        time.sleep(1)
    assert run_objects(client, dag_id, run_id) == {}


def test_cleared_task_reruns_alone(deployment):
    run_id = deployment.trigger("fa_mapped")
    assert deployment.wait_run("fa_mapped", run_id) == "success"
    before = deployment.xcom_rows("fa_mapped", run_id)[("produce", 1, "return_value")]
    cleared = deployment.clear("fa_mapped", run_id, [("produce", 1)], include_downstream=False)
    assert cleared == [("produce", 1)]
    assert deployment.wait_run("fa_mapped", run_id) == "success", deployment.task_states("fa_mapped", run_id)
    tries = {
        (ti["task_id"], ti["map_index"]): ti["try_number"]
        for ti in deployment.task_instances("fa_mapped", run_id)
    }
    assert tries.pop(("produce", 1)) == 2
    assert set(tries.values()) == {1}, tries  # nothing else ran again
    after = deployment.xcom_rows("fa_mapped", run_id)[("produce", 1, "return_value")]
    assert is_reference(after) and after["object_id"] != before["object_id"]  # a new object was pushed


def test_fluid_task_streams_its_output_into_the_task_log(deployment):
    dag_id = "fa_fluid_stream"
    run_id = deployment.trigger(dag_id, {"pause": 15})
    deployment.wait_task(dag_id, run_id, "talk", ("running", "success", "failed"), timeout=300)
    deadline = time.monotonic() + 60
    log = ""
    state = "running"
    while "fluid step: first line" not in log and state == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        log = deployment.task_log(dag_id, run_id, "talk")
        state = deployment.task_states(dag_id, run_id)[("talk", -1)]
    assert "fluid step: first line" in log, log
    assert state == "running" and "fluid step: second line" not in log, (state, log)
    state = deployment.wait_run(dag_id, run_id)
    log = deployment.task_log(dag_id, run_id, "talk")
    assert state == "success", (deployment.task_states(dag_id, run_id), log)
    assert "fluid step: second line" in log
    assert deployment.xcom_rows(dag_id, run_id)[("total", -1, "return_value")] == sum(range(1000))


def test_fluid_pipeline_dag_succeeds(deployment):
    dag_id = "fluid_vineyard_pipeline"
    run_id = deployment.trigger(dag_id, {"dataset": "pipeline-deployment"})
    assert deployment.wait_run(dag_id, run_id, timeout=600) == "success", deployment.task_states(
        dag_id, run_id
    )
    got = deployment.xcom_rows(dag_id, run_id)
    assert got[("bind_runtime", -1, "return_value")]["backend"] == "local"
    assert got[("test", -1, "return_value")]["r2"] > 0.5
    assert got[("cleanup", -1, "return_value")] == {"pods": [], "dataset": True, "runtime": True}


def test_run_dataset_name_renders_for_every_run_type(deployment):
    from fluid_airflow.fluid.manifests import validate_names
    from fluid_airflow.macros import run_dataset_name

    dag_id = "fa_dataset_name"  # @daily, unpaused at creation: the scheduler starts a run itself
    deployment.trigger(dag_id)  # REST, no logical date
    cli = deployment.airflow("dags", "trigger", dag_id)  # the CLI's manual run
    assert cli.returncode == 0, cli.stderr
    body = {"dag_id": dag_id, "from_date": "2026-01-02T00:00:00Z", "to_date": "2026-01-03T00:00:00Z"}
    # Airflow 3.3.2 answers 503 "Database is locked ..." (api_fastapi/core_api/routes/public/backfills.py,
    # _raise_locked_response_or_reraise) while the scheduler writes to SQLite: ask again until it lets go.
    deadline = time.monotonic() + 60
    while (answer := deployment.request("POST", "/api/v2/backfills", body))[0] == 503:
        assert time.monotonic() < deadline and "Database is locked" in str(answer[1]), answer
        time.sleep(1)
    assert answer[0] == 200, answer

    def runs() -> list[dict]:
        return deployment.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")[1]["dag_runs"]

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        current = runs()
        kinds = {r["run_type"] for r in current}
        finished = all(r["state"] in ("success", "failed") for r in current)
        if kinds >= {"scheduled", "manual", "backfill"} and len(current) >= 5 and finished:
            break
        time.sleep(2)
    assert {r["state"] for r in current} == {"success"}, current
    names = {}
    for run in current:
        name = deployment.xcom_rows(dag_id, run["dag_run_id"])[("name", -1, "return_value")]
        assert name == run_dataset_name("flights", run["dag_run_id"], dag_id)
        validate_names(name, "default")
        names[run["dag_run_id"]] = name
    assert len(set(names.values())) == len(names) == len(current) >= 5, (names, current)


def test_kubernetes_only_options_fail_clearly_on_the_local_backend(deployment):
    dag_id = "fa_fluid_local_limits"
    run_id = deployment.trigger(dag_id)
    assert deployment.wait_run(dag_id, run_id) == "failed"
    states = deployment.task_states(dag_id, run_id)
    assert states[("pod", -1)] == "failed" and states[("with_volume", -1)] == "failed", states
    assert states[("placed", -1)] == "success" and states[("cleanup", -1)] == "success", states
    pod_log = deployment.task_log(dag_id, run_id, "pod")
    assert "FluidPodOperator 'pod' runs a pod, but fluid connection 'fluid_default' uses the local" in pod_log
    assert "Service host/port is not set" not in pod_log
    volume_log = deployment.task_log(dag_id, run_id, "with_volume")
    assert "volumes, volume_mounts need(s) the kubernetes backend" in volume_log, volume_log
    placed_log = deployment.task_log(dag_id, run_id, "placed")
    assert "Local backend: image, node_selector ignored" in placed_log, placed_log


def test_deferrable_sensor_and_bind_wait_in_the_triggerer(deployment):
    dag_id = "fa_fluid_deferred"
    run_id = deployment.trigger(dag_id)
    # The sensor defers while the Dataset has no runtime; the triggerer's trigger then sees it ready.
    assert deployment.wait_task(dag_id, run_id, "wait_ready", ("deferred", "success", "failed")) == "deferred"
    assert deployment.wait_run(dag_id, run_id) == "success", deployment.task_states(dag_id, run_id)
    assert deployment.xcom_rows(dag_id, run_id)[("use", -1, "return_value")] == "default/deferred-test"
    assert "Dataset default/deferred-test" in deployment.task_log(dag_id, run_id, "wait_ready")


def test_fluid_task_dag_runs_in_the_datasets_warm_runner(deployment, tmp_path):
    """The Dataset's warm runner (started by bind) runs every @task.fluid task: references in and
    out, mapped, env_vars, a failing first try (the function's traceback fails the task), under
    the supervisor; every task's child is gone afterwards, and cleanup stopped the runner."""
    import re

    import psutil

    dag_id = "fa_fluid_task"
    run_id = deployment.trigger(dag_id, {"marker_dir": str(tmp_path), "scale": 5})
    assert deployment.wait_run(dag_id, run_id, timeout=600) == "success", deployment.task_states(
        dag_id, run_id
    )
    got = deployment.xcom_rows(dag_id, run_id)
    assert got[("summarize", -1, "return_value")] == {
        "label": "arange",
        "total": float(sum(range(400_000))),
        "read_only": True,
        "scaled": [5.0, 10.0, 15.0],
    }
    refs = [got[("scale", i, "return_value")] for i in range(3)]
    assert all(is_reference(r) for r in refs) and len({r["name"] for r in refs}) == 3
    first_try = deployment.task_log(dag_id, run_id, "summarize", try_number=1)
    assert "RuntimeError: first try fails on purpose" in first_try and "Traceback" in first_try, first_try
    assert "failed in its local process (exit code 1)" in first_try
    logs = [first_try, deployment.task_log(dag_id, run_id, "summarize", try_number=2)]
    logs += [deployment.task_log(dag_id, run_id, "scale", map_index=i) for i in range(3)]
    pids = [int(p) for log in logs for p in re.findall(r"runs in local process (\d+), the warm runner", log)]
    assert len(pids) == 5, logs  # every task ran in the Dataset's warm runner
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    from conftest import processes_naming

    left = processes_naming(str(deployment.runtime / "fluid"))  # warm runner, vineyardd of the Dataset
    assert not left, [p.cmdline() for p in left]


def test_small_values_stay_inline_and_every_row_reads_in_the_rest_api(deployment):
    """With the provider's default floor, the issue's 3x4 DataFrame and 80-byte array stay in their
    DB rows (read here through the REST API's XCom entry, as the UI does), consumers get them back
    exactly, and a multiple_outputs tree row starts with its one-line summary."""
    import json
    from urllib.parse import quote

    from conftest import assert_inline_rows

    dep = deployment
    dag_id = "fa_inline"
    run_id = dep.trigger(dag_id)
    assert dep.wait_run(dag_id, run_id, timeout=600) == "success", dep.task_states(dag_id, run_id)
    assert_inline_rows(dep.xcom_rows(dag_id, run_id))

    def entry(task_id: str, key: str = "return_value", query: str = "") -> object:
        run = quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/xcomEntries/{key}{query}"
        status, body = dep.request("GET", path)
        assert status == 200, body
        return body["value"]

    for task_id, first in (
        ("small_frame", "pandas.DataFrame 3 x 4"),
        ("small_array", "numpy.ndarray float64 10"),
    ):
        raw = entry(task_id)
        row = json.loads(raw) if isinstance(raw, str) else raw
        assert next(iter(row)) == "summary" and row["summary"].startswith(first), row
        assert first in str(entry(task_id, query="?deserialize=true"))  # the UI's rendering
    assert json.dumps(entry("small_array")).count("9.0") == 1  # the values themselves are readable
    whole = entry("split")
    whole = json.loads(whole) if isinstance(whole, str) else whole
    assert next(iter(whole)) == "summary" and whole["summary"].startswith("dict of 3: X numpy.ndarray")
