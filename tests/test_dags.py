"""Real Airflow (dag.test() on SQLite) with the Vineyard XCom backend and a real vineyardd."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import BIN, assert_inline_rows, task_states, xcom_rows

from fluid_airflow.hooks.vineyard import VineyardHook, close_clients
from fluid_airflow.vineyard.data.reference import VineyardReference, is_reference


def values(dag_run) -> dict[tuple[str, int, str], object]:
    return {(x.task_id, x.map_index, x.key): x.value for x in xcom_rows(dag_run.dag_id, dag_run.run_id)}


def fa_types_kinds() -> list[str]:
    """The kinds tests/dags/fa_types.py hands over here (polars and torch where installed)."""
    import runpy

    return runpy.run_path(str(Path(__file__).parent / "dags" / "fa_types.py"))["KINDS"]


def test_every_type_round_trips_through_airflow(run_dag):
    KINDS = fa_types_kinds()
    assert "df_strings" in KINDS and "polars_df" in KINDS  # polars: a dev dependency
    dr = run_dag("fa_types")
    assert str(dr.state) == "success"
    result = values(dr)[("check", -1, "return_value")]
    assert result == dict.fromkeys(KINDS, True)
    refs = [v for (t, _, _), v in values(dr).items() if t == "make"]
    assert len(refs) == len(KINDS) and all(is_reference(r) for r in refs)


def test_mapped_producer_through_every_pull_path(run_dag):
    dr = run_dag("fa_mapped")
    assert str(dr.state) == "success"
    got = values(dr)
    assert got[("consume_all", -1, "return_value")] == [1.0, 2.0, 3.0]
    assert got[("pull_paths", -1, "return_value")] == {"single": 2.0, "every": [1.0, 2.0, 3.0]}
    assert [got[("consume_one", i, "return_value")] for i in range(3)] == [1000.0, 2000.0, 3000.0]
    names = {got[("produce", i, "return_value")]["name"] for i in range(3)}
    assert len(names) == 3


def test_retried_task_leaves_no_orphan_object(run_dag, vineyard_client):
    before = int(vineyard_client.status.memory_usage)
    dr = run_dag("fa_retry")
    assert str(dr.state) == "success"
    got = values(dr)
    assert got[("consume", -1, "return_value")] == {"total": 7.0 * 250_000, "partial_try": 2.0}
    refs = [VineyardReference.from_json(v) for v in got.values() if is_reference(v)]
    assert {r.key for r in refs} == {"partial", "return_value"}
    # Only the second try's two objects remain: the first try's 'partial' was replaced.
    assert int(vineyard_client.status.memory_usage) - before == sum(r.bytes for r in refs)


def test_lost_object_fails_consumer_with_named_error(run_dag):
    dr = run_dag("fa_lost_object")
    states = task_states(dr)
    assert states[("catch", -1)] == "success"
    assert states[("consume", -1)] == "failed"
    caught = values(dr)[("catch", -1, "return_value")]
    assert caught["error"] == "VineyardObjectLostError"
    assert dr.run_id in caught["message"] and "'produce'" in caught["message"]
    assert "clear task 'produce'" in caught["message"]


def test_unsupported_value_fails_the_producer_at_push_time(run_dag, vineyard_client):
    before = int(vineyard_client.status.memory_usage)
    dr = run_dag("fa_unsupported")
    states = task_states(dr)
    assert states[("returns_lock", -1)] == "failed"
    assert states[("returns_object_array", -1)] == "failed"
    assert states[("after", -1)] == "upstream_failed"
    assert not values(dr)
    assert int(vineyard_client.status.memory_usage) == before


def test_flights_demo_dag_keeps_db_rows_small(run_dag):
    dr = run_dag("flights_delay_regression")
    assert str(dr.state) == "success"
    rows = xcom_rows(dr.dag_id, dr.run_id)
    sizes = {(x.task_id, x.key): len(json.dumps(x.value)) for x in rows}
    assert max(sizes.values()) < 2048, sizes
    refs = [VineyardReference.from_json(x.value) for x in rows if is_reference(x.value)]
    assert {r.type for r in refs} >= {"pandas.DataFrame", "numpy.ndarray", "pyarrow.Table"}
    assert sum(r.bytes for r in refs) > 10_000_000  # the data really went to Vineyard
    metrics = next(x.value for x in rows if x.task_id == "evaluate" and x.key == "return_value")
    assert metrics["r2"] > 0.5 and 0 < metrics["rmse"] < 100


def _airflow_home(tmp: Path, name: str) -> dict[str, str]:
    home = tmp / name
    home.mkdir()
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], check=True, capture_output=True, env=env)
    return env


def test_concurrent_runs_of_one_dag_do_not_see_each_other(vineyardd):
    with tempfile.TemporaryDirectory(prefix="fa-conc-") as tmp:
        tmp_path = Path(tmp)
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        runs = []
        for token, day in ((1, "2026-01-01"), (2, "2026-01-02")):
            env = _airflow_home(tmp_path, f"home{token}")
            conf = json.dumps({"token": token, "barrier_dir": str(barrier)})
            cmd = [str(BIN / "airflow"), "dags", "test", "fa_concurrent", day, "-c", conf]
            runs.append(
                (token, env, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            )
        for token, env, proc in runs:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out.decode()[-3000:]
            db = sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")
            ((raw,),) = db.execute("select value from xcom where task_id='consume' and key='return_value'")
            db.close()
            assert json.loads(raw) == {"token": token, "values": [float(token)]}


@pytest.mark.integration  # a fresh interpreter
def test_airflow_lists_the_provider_and_its_connection_types():
    listed = subprocess.run(
        [str(BIN / "airflow"), "providers", "list"], capture_output=True, text=True, check=True
    )
    assert "fluid-airflow" in listed.stdout
    hooks = subprocess.run(
        [str(BIN / "airflow"), "providers", "hooks"], capture_output=True, text=True, check=True
    )
    rows = {line.split("|")[0].strip(): line for line in hooks.stdout.splitlines() if "fluid_airflow" in line}
    assert "fluid_airflow.hooks.vineyard.VineyardHook" in rows["vineyard"]
    assert "fluid_airflow.hooks.fluid.FluidHook" in rows["fluid"]


@pytest.mark.integration  # a fresh interpreter per case
@pytest.mark.parametrize("lazy", ["True", "False"])
def test_the_plugin_is_registered_once(lazy):

    env = {**os.environ, "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": lazy}
    done = subprocess.run(
        [str(BIN / "airflow"), "plugins", "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    plugins = [p for p in json.loads(done.stdout) if p["name"] == "fluid_airflow"]
    assert len(plugins) == 1  # loaded whether or not providers are discovered lazily
    assert "already registered" not in done.stdout + done.stderr


def test_multiple_outputs_store_each_array_once(run_dag, vineyard_client):
    before = int(vineyard_client.status.memory_usage)
    dr = run_dag("fa_multiple_outputs")
    assert str(dr.state) == "success"
    got = values(dr)
    assert got[("use", -1, "return_value")] == [300_000.0, 0.0, ["rows", "test", "train"], 400_000]
    per_key = [VineyardReference.from_json(got[("split", -1, k)]) for k in ("train", "test")]
    # The whole-dict return_value push reuses the per-key objects: no second copy.
    assert int(vineyard_client.status.memory_usage) - before == sum(r.bytes for r in per_key)


def test_a_value_changed_in_place_after_a_push_reaches_consumers_as_returned(run_dag):
    dr = run_dag("fa_stale")
    assert str(dr.state) == "success", task_states(dr)
    got = values(dr)
    # Not the values of the earlier ti.xcom_push (0.0): what the task returned.
    assert got[("check", -1, "return_value")] == {
        "plain_arr": 1.0,
        "plain_df": 2.0,
        "outputs_arr": 3.0,
        "outputs_key": 3.0,
    }
    # The multiple_outputs task's whole dict still refers to Airflow's per-key push (no copy).
    tree_leaf = got[("outputs", -1, "return_value")]["value"]["dict"]["arr"]["ref"]
    assert tree_leaf["object_id"] == got[("outputs", -1, "arr")]["object_id"]


def test_backend_can_use_a_vineyard_connection(run_dag, vineyardd, monkeypatch):
    conn = {"conn_type": "vineyard", "extra": {"ipc_socket": str(vineyardd.socket_path)}}
    monkeypatch.setenv("AIRFLOW_CONN_MY_VINEYARD", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_CONN_ID", "my_vineyard")
    monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_SOCKET", "/nonexistent/vineyard.sock")  # must be unused
    dr = run_dag("fa_mapped")
    assert str(dr.state) == "success"
    assert values(dr)[("consume_all", -1, "return_value")] == [1.0, 2.0, 3.0]


def test_fluid_pipeline_runs_on_the_local_backend(run_dag, monkeypatch):
    from conftest import processes_naming

    from fluid_airflow import config

    conn = {"conn_type": "fluid", "extra": {"backend": "local", "local_max_cache": "256Mi"}}
    monkeypatch.setenv("AIRFLOW_CONN_FLUID_DEFAULT", json.dumps(conn))
    dr = run_dag("fluid_vineyard_pipeline", conf={"dataset": "pipeline-test"})
    assert str(dr.state) == "success", task_states(dr)
    got = values(dr)
    assert got[("create_dataset", -1, "return_value")]["created"] is True
    assert got[("bind_runtime", -1, "return_value")]["backend"] == "local"
    assert got[("preprocess", -1, "return_value")]["__vineyard_tree__"] == 1  # references, not data
    # multiple_outputs: each key is its own object; the whole dict only refers to them.
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert is_reference(got[("preprocess", -1, key)]) and got[("preprocess", -1, key)]["key"] == key
    assert is_reference(got[("train", -1, "return_value")])
    assert got[("test", -1, "return_value")]["r2"] > 0.5
    assert got[("cleanup", -1, "return_value")] == {"pods": [], "dataset": True, "runtime": True}
    fluid_root = config.runtime_dir() / "fluid"
    assert not any(fluid_root.iterdir()) and not processes_naming(str(fluid_root))


def test_fluid_task_passes_references_and_never_loads_payloads_in_the_worker(run_dag, monkeypatch, tmp_path):
    from fluid_airflow.vineyard import xcom

    conn = {"conn_type": "fluid", "extra": {"backend": "local", "local_max_cache": "256Mi"}}
    monkeypatch.setenv("AIRFLOW_CONN_FLUID_DEFAULT", json.dumps(conn))
    loaded_before = xcom.resolved_in_process
    dr = run_dag("fa_fluid_task", conf={"marker_dir": str(tmp_path), "scale": 5})
    assert str(dr.state) == "success", task_states(dr)
    got = values(dr)
    summary = got[("summarize", -1, "return_value")]
    assert summary == {
        "label": "arange",
        "total": float(sum(range(400_000))),
        "read_only": True,  # zero-copy view of the Dataset's vineyardd, in the task's own process
        "scaled": [5.0, 10.0, 15.0],
    }
    # What came back through XCom are references; one object per map index.
    assert got[("produce", -1, "return_value")]["__vineyard_tree__"] == 1
    names = {got[("scale", i, "return_value")]["name"] for i in range(3)}
    assert len(names) == 3 and all(is_reference(got[("scale", i, "return_value")]) for i in range(3))
    import datetime

    from airflow.sdk.serde import deserialize

    described = [deserialize(got[("describe", i, "return_value")]) for i in range(3)]  # serialised once
    assert described == [
        {"first": f, "when": datetime.date(2026, 1, 2), "pair": (1, 2)} for f in (5.0, 10.0, 15.0)
    ]
    assert got[("plain_total", -1, "return_value")] == float(sum(range(400_000)))
    # Only the plain @task (one tree of 1 array) loaded a payload in the Airflow worker process.
    assert xcom.resolved_in_process == loaded_before + 1
    assert task_states(dr)[("cleanup", -1)] == "success"


def test_failed_step_still_cleans_up_and_fails_the_run(run_dag, monkeypatch):
    from conftest import processes_naming

    from fluid_airflow import config

    conn = {"conn_type": "fluid", "extra": {"backend": "local", "local_max_cache": "64Mi"}}
    monkeypatch.setenv("AIRFLOW_CONN_FLUID_DEFAULT", json.dumps(conn))
    dr = run_dag("fa_fluid_teardown")
    states = task_states(dr)
    assert states[("step", -1)] == "failed" and states[("cleanup", -1)] == "success"
    assert str(dr.state) == "failed"  # the teardown's success does not hide the failure
    fluid_root = config.runtime_dir() / "fluid"
    assert not any(fluid_root.iterdir()) and not processes_naming(str(fluid_root))


def test_run_objects_are_released_when_the_run_ends(run_dag, vineyard_client, monkeypatch):
    from fluid_airflow.vineyard.lifecycle.release import run_objects

    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "0")
    before = int(vineyard_client.status.memory_usage)
    dr = run_dag("fa_mapped")
    assert str(dr.state) == "success"
    assert values(dr)[("consume_all", -1, "return_value")] == [1.0, 2.0, 3.0]  # used while the run lived
    assert run_objects(vineyard_client, dr.dag_id, dr.run_id) == {}
    assert int(vineyard_client.status.memory_usage) == before  # released by the listener, no task added


def test_keep_for_holds_run_objects_for_debugging(run_dag, vineyard_client, monkeypatch):
    from fluid_airflow.vineyard.lifecycle.release import release_run, run_objects

    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "3600")
    dr = run_dag("fa_mapped")
    held = run_objects(vineyard_client, dr.dag_id, dr.run_id)
    assert len(held) == 3  # the three mapped arrays stay for inspection
    report = release_run(vineyard_client, dr.dag_id, dr.run_id)
    assert report.objects == 3 and report.bytes >= 3 * 8000
    assert run_objects(vineyard_client, dr.dag_id, dr.run_id) == {}


def test_release_operator_frees_the_run(run_dag, vineyard_client):
    from fluid_airflow.vineyard.lifecycle.release import run_objects

    before = int(vineyard_client.status.memory_usage)
    dr = run_dag("fa_release")
    assert str(dr.state) == "success"
    released = values(dr)[("release", -1, "return_value")]
    assert released["objects"] == 1 and released["bytes"] >= 400_000
    assert run_objects(vineyard_client, dr.dag_id, dr.run_id) == {}
    assert int(vineyard_client.status.memory_usage) == before


def test_vineyardd_restart_between_producer_and_consumer(dagbag, runtime, monkeypatch, capfd):
    """The consumer fails fast with the lost-object error; re-running the producer fixes it."""
    import time

    from fluid_airflow.vineyard.local.daemon import LocalVineyardd

    LocalVineyardd(runtime).start("64Mi")
    monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_SOCKET", str(runtime / "vineyard.sock"))
    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "0")
    monkeypatch.setenv(
        "AIRFLOW__FLUID__KEEP_FAILED_FOR", "0"
    )  # this run fails: release it too  # released at run end: nothing may stay
    dag = dagbag.get_dag("fa_restart")
    started = time.monotonic()
    dr = dag.test(run_conf={"runtime_dir": str(runtime)})
    states = task_states(dr)
    assert states[("restart_vineyardd", -1)] == "success" and states[("consume", -1)] == "failed"
    assert time.monotonic() - started < 60  # no hang: the error comes at once
    logged = capfd.readouterr().out
    assert "VineyardObjectLostError" in logged and "clear task 'produce'" in logged
    # Re-running the run from the producer (what clearing it does) recomputes the value.
    again = dag.test(logical_date=dr.logical_date, run_conf={"runtime_dir": str(runtime)})
    assert str(again.state) == "success"
    assert values(again)[("consume", -1, "return_value")] == float(sum(range(100_000)))
    client = VineyardHook(ipc_socket=str(runtime / "vineyard.sock")).get_conn()
    assert client.list_names("*", limit=100) == {} and client.status.memory_usage == 0
    close_clients(str(runtime / "vineyard.sock"))


def test_four_concurrent_demo_runs_collide_nowhere_and_leave_nothing(runtime):
    """Four `airflow dags test` processes of the demo DAG share one vineyardd; each releases its run."""
    from fluid_airflow.vineyard.local.daemon import LocalVineyardd

    daemon = LocalVineyardd(runtime)
    daemon.start("3Gi")
    with tempfile.TemporaryDirectory(prefix="fa-four-") as tmp:
        runs = []
        for i in range(4):
            env = _airflow_home(Path(tmp), f"home{i}")
            env.update(AIRFLOW__FLUID__VINEYARD_SOCKET=str(daemon.socket_path), AIRFLOW__FLUID__KEEP_FOR="0")
            cmd = [str(BIN / "airflow"), "dags", "test", "flights_delay_regression", f"2026-02-0{i + 1}"]
            runs.append(
                (env, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            )
        metrics = []
        for env, proc in runs:
            out, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, out.decode()[-3000:]
            db = sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")
            ((raw,),) = db.execute("select value from xcom where task_id='evaluate' and key='return_value'")
            db.close()
            metrics.append(json.loads(raw))
    assert all(m == metrics[0] for m in metrics) and metrics[0]["r2"] > 0.5  # same data, same result
    status = daemon.status()
    assert status.memory_usage == 0  # every run released its objects when it ended


def test_a_failed_run_keeps_its_objects_for_a_clear(run_dag, vineyard_client, monkeypatch, tmp_path):
    from fluid_airflow.vineyard.lifecycle.release import release_run, run_objects

    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "0")  # the defaults: successful runs go at once,
    monkeypatch.delenv("AIRFLOW__FLUID__KEEP_FAILED_FOR", raising=False)  # failed ones stay a day
    dr = run_dag("fa_fix_clear", conf={"count_dir": str(tmp_path)})
    assert str(dr.state) == "failed"
    held = run_objects(vineyard_client, dr.dag_id, dr.run_id)
    assert len(held) == 1  # the producer's array is still there for a cleared consumer
    ref = next(v for v in values(dr).values() if is_reference(v))
    assert ref["expires"] == "at run end; if the run fails, 86400 s after run end"
    release_run(vineyard_client, dr.dag_id, dr.run_id)


def test_small_values_stay_inline_under_dag_test(run_dag, monkeypatch):
    from fluid_airflow import config

    conn = {"conn_type": "fluid", "extra": {"backend": "local", "local_max_cache": "256Mi"}}
    monkeypatch.setenv("AIRFLOW_CONN_FLUID_DEFAULT", json.dumps(conn))
    monkeypatch.setenv(
        "AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR", config.OPTIONS["inline_payload_floor"]["default"]
    )
    dr = run_dag("fa_inline")
    assert str(dr.state) == "success", task_states(dr)
    assert_inline_rows(values(dr))
