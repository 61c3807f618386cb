"""Run lifecycle under a real scheduler: a failed task is fixed and cleared with default settings
and finds its inputs; objects past their retention are released with nobody running a command,
and the handoffs page says so at every step."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import quote

import pytest

from fluid_airflow.vineyard.lifecycle.release import run_objects

pytestmark = pytest.mark.deployment


def test_fix_then_clear_a_failed_task_with_default_settings(deployment, tmp_path):
    dag_id = "fa_fix_clear"
    run_id = deployment.trigger(dag_id, conf={"count_dir": str(tmp_path)})
    assert deployment.wait_run(dag_id, run_id) == "failed"
    assert "a bug in consume" in deployment.task_log(dag_id, run_id, "consume")
    assert run_objects(deployment.vineyard_client(), dag_id, run_id)  # the failed run keeps its objects
    status, body = deployment.request(
        "POST", "/api/v2/variables", {"key": "fa_fix_clear_fixed", "value": "yes"}
    )
    assert status in (200, 201), body
    try:
        assert deployment.clear(dag_id, run_id, ["consume"], only_failed=True) == [("consume", -1)]
        assert deployment.wait_run(dag_id, run_id) == "success", deployment.task_states(dag_id, run_id)
    finally:
        deployment.request("DELETE", "/api/v2/variables/fa_fix_clear_fixed")
    assert deployment.xcom_rows(dag_id, run_id)[("consume", -1, "return_value")] == 1_000_000.0
    assert len(list(tmp_path.glob("produce-*"))) == 1  # the producer ran exactly once
    # Now the run succeeded: released at its end, as any successful run.
    deadline = time.monotonic() + 60
    while run_objects(deployment.vineyard_client(), dag_id, run_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run_objects(deployment.vineyard_client(), dag_id, run_id) == {}


def _page_states(dep, dag_id: str, run_id: str) -> set[str]:
    path = f"/fluid/api/handoffs?dag_id={dag_id}&run_id={quote(run_id, safe='')}"
    status, body = dep.request("GET", path)
    assert status == 200, body
    (run,) = [r for r in body["runs"] if r["run_id"] == run_id]
    return {o["state"] for o in run["objects"]}


def test_objects_past_their_retention_are_released_without_a_command(make_deployment):
    keep_for, interval = 8, 2
    dep = make_deployment(
        AIRFLOW__FLUID__KEEP_FOR=str(keep_for), AIRFLOW__FLUID__EXPIRY_INTERVAL=str(interval)
    )
    run_id = dep.trigger("fa_mapped")
    assert dep.wait_run("fa_mapped", run_id) == "success", dep.task_states("fa_mapped", run_id)
    ended = time.monotonic()
    client = dep.vineyard_client()
    held = run_objects(client, "fa_mapped", run_id)
    assert len(held) == 3 and _page_states(dep, "fa_mapped", run_id) == {"live"}
    # The bound: keep_for, plus one expiry interval, plus one round of gc.
    bound = keep_for + interval + 10
    while run_objects(client, "fa_mapped", run_id) and time.monotonic() - ended < bound:
        assert _page_states(dep, "fa_mapped", run_id) <= {"live", "released"}
        time.sleep(0.5)
    assert run_objects(client, "fa_mapped", run_id) == {}, f"still held {bound} s after the run ended"
    assert time.monotonic() - ended >= keep_for - 1  # not before its retention
    assert _page_states(dep, "fa_mapped", run_id) == {"released"}
    assert int(client.status.memory_usage) == 0  # nobody ran gc: the scheduler's expiry did


def test_each_dag_run_has_a_handoffs_tab_filtered_to_it(deployment):
    status, body = deployment.request("GET", "/api/v2/plugins")
    assert status == 200, body
    (plugin,) = [p for p in body["plugins"] if p["name"] == "fluid_airflow"]
    (tab,) = [v for v in plugin["external_views"] if v["destination"] == "dag_run"]
    assert tab["href"] == "/fluid/handoffs?dag_id={DAG_ID}&run_id={RUN_ID}"
    run_id = deployment.trigger("fa_mapped")
    assert deployment.wait_run("fa_mapped", run_id) == "success"
    # What the UI loads in the tab once it filled in the run: the page, then its filtered data.
    href = tab["href"].replace("{DAG_ID}", "fa_mapped").replace("{RUN_ID}", quote(run_id, safe=""))
    status, page = deployment.request("GET", href, accept="text/html")
    assert status == 200 and "Vineyard" in page
    status, data = deployment.request(
        "GET", f"/fluid/api/handoffs?dag_id=fa_mapped&run_id={quote(run_id, safe='')}"
    )
    assert status == 200 and [r["run_id"] for r in data["runs"]] == [run_id]


def test_the_lost_object_error_names_the_rest_call_that_recovers_the_run(make_deployment):
    """vineyardd restarts between producer and consumer: the consumer fails with VineyardObjectLostError,
    and the REST call its message gives, posted exactly as written, re-runs the producer and the run ends
    well (its own deployment: the DAG restarts vineyardd with another size)."""
    dep = make_deployment()
    run_id = dep.trigger("fa_restart", conf={"runtime_dir": str(dep.runtime)})
    assert dep.wait_run("fa_restart", run_id) == "failed", dep.task_states("fa_restart", run_id)
    log = dep.task_log("fa_restart", run_id, "consume")
    advice = re.search(r"REST: POST (\S+) with (\{.*?\})\)", log)
    assert "VineyardObjectLostError" in log and advice, log
    status, body = dep.request("POST", advice.group(1), json.loads(advice.group(2)))
    assert status == 200, body
    assert dep.wait_run("fa_restart", run_id) == "success", dep.failed_logs("fa_restart", run_id)
    assert dep.xcom_rows("fa_restart", run_id)[("consume", -1, "return_value")] == float(sum(range(100_000)))
