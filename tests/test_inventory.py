"""What the handoffs page lists: live, lost, released and orphaned objects of real DAG runs, and the
operator link to the page. (The page itself runs end to end in test_ui_e2e.py.)"""

from __future__ import annotations

from conftest import delete_xcom

from fluid_airflow.vineyard.lifecycle import inventory


def states(holdings, run_id: str) -> dict[tuple[str, int, str], str]:
    (run,) = [h for h in holdings if h.run_id == run_id]
    return {(o.task_id, o.map_index, o.key): o.state for o in run.objects}


def test_live_objects_of_a_kept_run_with_sizes_and_types(run_dag, vineyard_client):
    dr = run_dag("fa_gc")
    (run,) = [h for h in inventory.collect(vineyard_client, {"fa_gc"}) if h.run_id == dr.run_id]
    assert run.run_state == "success"
    by_key = {(o.task_id, o.map_index, o.key): o for o in run.objects}
    assert set(by_key) == {
        ("make", 0, "return_value"), ("make", 1, "return_value"),
        ("pair", -1, "return_value.left"), ("pair", -1, "return_value.right"),
        ("odd.task-1", -1, "return_value"), ("odd.task-1", -1, "odd key: a+b"),
    }  # fmt: skip
    assert {o.state for o in run.objects} == {"live"}
    make0 = by_key[("make", 0, "return_value")]
    assert (make0.type, make0.shape, make0.bytes) == ("numpy.ndarray", [1000], 8000)
    assert make0.age is not None and 0 <= make0.age < 600
    assert run.bytes == 8 * (1000 + 1000 + 500 + 700 + 300 + 200)


def test_deleted_xcom_row_makes_its_object_an_orphan(run_dag, vineyard_client):
    dr = run_dag("fa_gc")
    delete_xcom(dr, "odd.task-1", "odd key: a+b")
    got = states(inventory.collect(vineyard_client, {"fa_gc"}), dr.run_id)
    assert got[("odd.task-1", -1, "odd key: a+b")] == "orphan"
    assert got[("odd.task-1", -1, "return_value")] == "live"


def test_object_gone_behind_airflows_back_is_lost(run_dag, vineyard_client):
    dr = run_dag("fa_lost_object")
    got = states(inventory.collect(vineyard_client, {"fa_lost_object"}), dr.run_id)
    assert got[("produce", -1, "return_value")] == "lost"


def test_run_released_at_its_end_shows_released_objects(run_dag, vineyard_client, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "0")
    dr = run_dag("fa_gc")
    got = states(inventory.collect(vineyard_client, {"fa_gc"}), dr.run_id)
    assert set(got.values()) == {"released"} and len(got) == 6


def test_dag_filter_hides_other_dags(run_dag, vineyard_client):
    run_dag("fa_gc")
    assert {h.dag_id for h in inventory.collect(vineyard_client, {"fa_lost_object"})} <= {"fa_lost_object"}
    assert inventory.collect(vineyard_client, set()) == []


def test_instances_report_used_and_limit(vineyard_client, vineyardd):
    (row,) = inventory.instances(vineyard_client)
    assert row["ipc_socket"] == str(vineyardd.socket_path)
    assert row["memory_limit"] == 2 * 1024**3 and row["memory_usage"] == vineyard_client.status.memory_usage


def test_operator_link_points_at_the_page_filtered_to_the_run(monkeypatch):
    from airflow.sdk.types import TaskInstanceKey

    from fluid_airflow.links import VineyardHandoffsLink
    from fluid_airflow.operators.pod import FluidPodOperator
    from fluid_airflow.operators.release import FluidReleaseRunOperator

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/base/")
    key = TaskInstanceKey(dag_id="d 1", task_id="t", run_id="manual__2026-01-01T00:00:00+00:00", try_number=1)
    link = VineyardHandoffsLink().get_link(None, ti_key=key)
    assert link == (
        "https://airflow.example.org/base/fluid/handoffs?dag_id=d+1&run_id=manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    )
    assert any(isinstance(x, VineyardHandoffsLink) for x in FluidPodOperator.operator_extra_links)
    assert any(isinstance(x, VineyardHandoffsLink) for x in FluidReleaseRunOperator.operator_extra_links)
