"""``fluid-airflow gc`` against a real vineyardd and real Airflow runs (``dag.test()`` on SQLite).

Every test stores its objects under its own ``[fluid] name_prefix``, so gc only ever sees that
test's objects, and releases whatever is left under it at the end. ``[fluid] keep_for`` is -1
while DAGs run, so nothing (e.g. a listener releasing at run end) frees objects behind gc's back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import delete_xcom, xcom_rows

from fluid_airflow.vineyard.data.naming import split_xcom_object_name, xcom_object_name
from fluid_airflow.vineyard.data.reference import is_reference
from fluid_airflow.vineyard.data.tree import is_tree, tree_refs
from fluid_airflow.vineyard.lifecycle import gc

SCRIPT = Path(sys.executable).parent / "fluid-airflow"
ODD_TASK = "odd.task-1"  # ids as tests/dags/fa_gc.py pushes them
ODD_KEY = "odd key: a+b"


@pytest.fixture
def prefix(monkeypatch, vineyard_client):
    """A name prefix of this test alone; its objects are released afterwards."""
    name = f"gc-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("AIRFLOW__FLUID__NAME_PREFIX", name)
    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "-1")
    yield name
    for obj_name, object_id in objects(vineyard_client, name).items():
        vineyard_client.drop_name(obj_name)
        vineyard_client.delete(object_id)


def objects(client, prefix: str) -> dict:
    return dict(client.list_names(prefix + "/*", limit=gc.LIST_LIMIT))


def used(client) -> int:
    return int(client.status.memory_usage)


def exists(client, object_id) -> bool:
    import vineyard

    try:
        client.get_meta(object_id)
    except vineyard.ObjectNotExistsException:
        return False
    return True


def refs_by_row(dag_run) -> dict[tuple[str, int, str], list[dict]]:
    """``{(task_id, map_index, key): [reference, ...]}`` of a run's rows that refer to Vineyard."""
    out = {}
    for row in xcom_rows(dag_run.dag_id, dag_run.run_id):
        if is_reference(row.value):
            out[(row.task_id, row.map_index, row.key)] = [row.value]
        elif is_tree(row.value):
            out[(row.task_id, row.map_index, row.key)] = tree_refs(row.value)
    return out


def delete_run(dag_run) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        session.delete(session.query(DagRun).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).one())


def set_run_state(dag_run, state: str) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(DagRun).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).one().set_state(state)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``fluid-airflow gc ...`` with this test's environment (AIRFLOW_HOME, prefix, keep_for)."""
    return subprocess.run(
        [str(SCRIPT), "gc", *args], capture_output=True, text=True, env=dict(os.environ), timeout=120
    )


def cli_json(*args: str) -> dict:
    result = cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_gc_dag(run_dag):
    dag_run = run_dag("fa_gc")
    assert str(dag_run.state) == "success"
    return dag_run


def test_deleted_xcom_row_orphans_exactly_its_object(run_dag, vineyard_client, prefix):
    dag_run = run_gc_dag(run_dag)
    refs = refs_by_row(dag_run)
    names = objects(vineyard_client, prefix)
    # 2 mapped arrays, a tree of 2, and the odd task's 2 keys; every one referenced by a row.
    assert len(names) == 6 and {r["name"] for rs in refs.values() for r in rs} == set(names)
    assert not gc.collect(vineyard_client, dry_run=True).reclaimed

    (victim,) = refs[("make", 1, "return_value")]
    delete_xcom(dag_run, "make", "return_value", map_index=1)
    before = used(vineyard_client)

    dry = gc.collect(vineyard_client, dry_run=True)
    assert [(o.name, o.object_id, o.reason, o.bytes) for o in dry.reclaimed] == [
        (victim["name"], victim["object_id"], "unreferenced", victim["bytes"])
    ]
    assert len(dry.kept) == 5 and {o.reason for o in dry.kept} == {"referenced"}
    assert used(vineyard_client) == before and objects(vineyard_client, prefix) == names

    report = gc.collect(vineyard_client)
    assert [o.name for o in report.reclaimed] == [victim["name"]] and report.bytes == victim["bytes"]
    assert used(vineyard_client) == before - victim["bytes"]
    left = objects(vineyard_client, prefix)
    assert set(left) == set(names) - {victim["name"]}
    assert all(exists(vineyard_client, oid) for oid in left.values())
    assert not exists(vineyard_client, names[victim["name"]])
    assert not gc.collect(vineyard_client).reclaimed  # nothing more to do


def test_deleting_a_tree_row_orphans_its_leaves_only(run_dag, vineyard_client, prefix):
    dag_run = run_gc_dag(run_dag)
    leaves = refs_by_row(dag_run)[("pair", -1, "return_value")]
    assert len(leaves) == 2
    delete_xcom(dag_run, "pair", "return_value")
    before = used(vineyard_client)
    report = gc.collect(vineyard_client)
    assert sorted(o.object_id for o in report.reclaimed) == sorted(r["object_id"] for r in leaves)
    assert report.totals("key") == {
        "return_value.left": {"objects": 1, "bytes": 4000},
        "return_value.right": {"objects": 1, "bytes": 5600},
    }
    assert used(vineyard_client) == before - 9600 and len(objects(vineyard_client, prefix)) == 4


def test_deleted_dag_run_orphans_all_its_objects_cli_json(run_dag, vineyard_client, prefix):
    dag_run = run_gc_dag(run_dag)
    names = objects(vineyard_client, prefix)
    sizes = {n: int(vineyard_client.get_meta(oid).memory_usage) for n, oid in names.items()}
    delete_run(dag_run)
    assert xcom_rows(dag_run.dag_id, dag_run.run_id) == []  # the rows went with the run (SQL cascade)
    before = used(vineyard_client)

    dry = cli_json("--dry-run")
    assert dry["dry_run"] is True and dry["reclaimed"] == {"objects": 6, "bytes": sum(sizes.values())}
    assert dry["by_reason"] == {"run_deleted": dry["reclaimed"]}
    assert dry["by_dag"] == {"fa_gc": dry["reclaimed"]}
    assert {o["name"]: o["bytes"] for o in dry["objects"]} == sizes
    assert {(o["dag_id"], o["run_id"]) for o in dry["objects"]} == {("fa_gc", dag_run.run_id)}
    assert used(vineyard_client) == before and objects(vineyard_client, prefix) == names

    done = cli_json()
    assert done["dry_run"] is False and done["reclaimed"] == dry["reclaimed"]
    assert done["kept"] == {"objects": 0, "bytes": 0} and done["skipped"] == []
    assert used(vineyard_client) == before - sum(sizes.values())
    assert objects(vineyard_client, prefix) == {}
    assert not any(exists(vineyard_client, oid) for oid in names.values())


def test_keep_for_expires_finished_runs(run_dag, vineyard_client, prefix, monkeypatch):
    dag_run = run_gc_dag(run_dag)
    names = objects(vineyard_client, prefix)
    end = dag_run.end_date
    assert end is not None
    # Still inside keep_for: kept. Past it: every object of the run expires.
    assert not gc.collect(vineyard_client, keep_for=60, now=end + timedelta(seconds=59)).reclaimed
    late = gc.collect(vineyard_client, dry_run=True, keep_for=60, now=end + timedelta(seconds=61))
    assert {o.name: o.reason for o in late.reclaimed} == dict.fromkeys(names, "expired")
    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "3600")
    assert not gc.collect(vineyard_client).reclaimed and objects(vineyard_client, prefix) == names

    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "0")  # release at run end: the run has ended
    before = used(vineyard_client)
    report = gc.collect(vineyard_client)
    assert report.keep_for == 0 and {o.name for o in report.reclaimed} == set(names)
    assert used(vineyard_client) == before - report.bytes and report.bytes > 0
    assert objects(vineyard_client, prefix) == {}


@pytest.mark.parametrize("state", ["running", "queued"])
def test_objects_of_unfinished_runs_are_never_touched(run_dag, vineyard_client, prefix, monkeypatch, state):
    import numpy as np

    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    dag_run = run_gc_dag(run_dag)
    set_run_state(dag_run, state)  # e.g. cleared and re-running
    delete_xcom(dag_run, "make", "return_value", map_index=0)
    # A task of the run between storing its object and writing its row: no row refers to it yet.
    in_flight = VineyardXComBackend.serialize_value(
        np.arange(100.0), key="in_flight", task_id="make", dag_id="fa_gc", run_id=dag_run.run_id, map_index=5
    )
    names = objects(vineyard_client, prefix)
    assert in_flight["name"] in names and len(names) == 7
    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "0")
    before = used(vineyard_client)

    report = gc.collect(vineyard_client)
    assert report.reclaimed == [] and len(report.kept) == 7
    assert {o.reason for o in report.kept} == {"run_active"}
    assert used(vineyard_client) == before and objects(vineyard_client, prefix) == names

    set_run_state(dag_run, "success")  # once it ends, keep_for=0 applies
    report = gc.collect(vineyard_client)
    reasons = {o.name: o.reason for o in report.reclaimed}
    assert set(reasons) == set(names)
    assert reasons[in_flight["name"]] == "unreferenced"
    assert sorted(reasons.values()).count("unreferenced") == 2  # in_flight and the deleted row's


def test_real_run_with_unusual_run_id_and_key(run_dag, vineyard_client, prefix, monkeypatch):
    from airflow.models.dagrun import DagRun

    # Airflow accepts such run ids once [scheduler] allowed_run_id_pattern allows them.
    run_id = "gc run: a+b~c"
    monkeypatch.setenv("AIRFLOW__SCHEDULER__ALLOWED_RUN_ID_PATTERN", ".*")
    monkeypatch.setattr(DagRun, "generate_run_id", staticmethod(lambda **_: run_id))
    dag_run = run_gc_dag(run_dag)
    assert dag_run.run_id == run_id
    (odd_ref,) = refs_by_row(dag_run)[(ODD_TASK, -1, ODD_KEY)]
    names = objects(vineyard_client, prefix)
    assert len(names) == 6 and odd_ref["name"] in names
    for name in names:
        scope = split_xcom_object_name(name)
        assert scope["prefix"] == prefix and scope["run_id"] == run_id and xcom_object_name(**scope) == name
    assert split_xcom_object_name(odd_ref["name"])["key"] == ODD_KEY

    delete_xcom(dag_run, ODD_TASK, ODD_KEY)
    dry = cli_json("--dry-run", "--dag-id", "fa_gc")
    assert [(o["run_id"], o["task_id"], o["key"], o["object_id"]) for o in dry["objects"]] == [
        (run_id, ODD_TASK, ODD_KEY, odd_ref["object_id"])
    ]
    delete_run(dag_run)
    before = used(vineyard_client)
    done = cli_json("--dag-id", "fa_gc")
    assert done["reclaimed"]["objects"] == 6 and used(vineyard_client) == before - done["reclaimed"]["bytes"]
    assert objects(vineyard_client, prefix) == {}


def make_run(dag_id: str, run_id: str, pushes: dict[tuple[str, str], object]) -> dict[tuple[str, str], dict]:
    """A finished DAG run built in the metadata DB, with one task instance and XCom row per push
    (``{(task_id, key): value}``) stored through the backend, as a task of that run would.

    Used for ids ``dag.test()`` cannot run (see tests/dags/fa_gc.py).
    """
    from datetime import datetime, timezone

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.sdk import DAG, BaseOperator
    from airflow.utils.session import create_session

    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    now = datetime.now(timezone.utc)
    refs = {}
    with DAG(dag_id, schedule=None), create_session() as session:
        session.add(DagRun(dag_id=dag_id, run_id=run_id, run_type="manual", run_after=now, start_date=now))
        for task_id in sorted({t for t, _ in pushes}):
            op = BaseOperator(task_id=task_id)
            session.add(TaskInstance(op, dag_version_id=None, run_id=run_id, state="success"))
        session.flush()
        for (task_id, key), value in pushes.items():
            scope = {"key": key, "task_id": task_id, "dag_id": dag_id, "run_id": run_id}
            refs[(task_id, key)] = VineyardXComBackend.serialize_value(value, map_index=-1, **scope)
            XComModel.set(value=refs[(task_id, key)], serialize=False, session=session, **scope)
        session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one().set_state("success")
    return refs


def test_any_characters_in_ids_round_trip_through_naming_and_gc(
    vineyard_client, prefix, monkeypatch, airflow_db
):
    import numpy as np

    dag_id, run_id, task_id = "fa_gc_ünï", "gc run: a+b/c %41 ü *[x]?", "prodüce.ß-1"
    keys = ["k/*?[x]% ü", "plain"]
    parts = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": 3, "key": keys[0]}
    name = xcom_object_name(prefix="p/x", **parts)
    assert name.count("/") == 5 and not set("*?[ ") & set(name)
    assert split_xcom_object_name(name) == {"prefix": "p/x", **parts}

    monkeypatch.setenv("AIRFLOW__SCHEDULER__ALLOWED_RUN_ID_PATTERN", ".*")
    refs = make_run(dag_id, run_id, {(task_id, k): np.arange(100.0 * (i + 1)) for i, k in enumerate(keys)})
    # A run of the same DAG with a similar id (which "*[x]?" would match as a glob): decided on its own.
    make_run(dag_id, "gc run: a+b/c %41 ü xx?", {(task_id, "plain"): np.zeros(10)})
    names = objects(vineyard_client, prefix)
    assert {refs[(task_id, k)]["name"] for k in keys} < set(names) and len(names) == 3
    stored = split_xcom_object_name(refs[(task_id, keys[0])]["name"])
    assert stored == {"prefix": prefix, **parts, "map_index": -1}

    delete_xcom(SimpleNamespace(dag_id=dag_id, run_id=run_id), task_id, keys[0])
    dry = cli_json("--dry-run", "--dag-id", dag_id)
    assert [(o["run_id"], o["task_id"], o["key"]) for o in dry["objects"]] == [(run_id, task_id, keys[0])]
    assert dry["objects"][0]["object_id"] == refs[(task_id, keys[0])]["object_id"]
    assert dry["kept"]["objects"] == 2

    delete_run(SimpleNamespace(dag_id=dag_id, run_id=run_id))
    before = used(vineyard_client)
    report = gc.collect(vineyard_client, dag_id=dag_id)
    # The run is gone, its rows with it: that reason wins over the deleted row's.
    assert {(o.run_id, o.key, o.reason) for o in report.reclaimed} == {
        (run_id, keys[0], "run_deleted"),
        (run_id, "plain", "run_deleted"),
    }
    assert used(vineyard_client) == before - 800 - 1600
    assert [split_xcom_object_name(n)["run_id"] for n in objects(vineyard_client, prefix)] == [
        "gc run: a+b/c %41 ü xx?"
    ]
    delete_run(SimpleNamespace(dag_id=dag_id, run_id="gc run: a+b/c %41 ü xx?"))
    assert len(gc.collect(vineyard_client, dag_id=dag_id).reclaimed) == 1


def test_foreign_names_are_skipped_and_dag_filter_applies(run_dag, vineyard_client, prefix):
    import numpy as np

    run_gc_dag(run_dag)
    foreign = {}
    for suffix in (
        "not-an-xcom",
        "fa_gc/run/task/notanint/key",
        "fa_gc/run/t%zz/-1/key",
        "other_dag/r/t/-1/k",
    ):
        object_id = vineyard_client.put(np.zeros(10), persist=True)
        vineyard_client.put_name(object_id, f"{prefix}/{suffix}")
        foreign[f"{prefix}/{suffix}"] = object_id
    report = gc.collect(vineyard_client, dry_run=True)
    # 'other_dag/r/...' is a valid name of a run that does not exist: an orphan, not skipped.
    assert [o.name for o in report.reclaimed] == [f"{prefix}/other_dag/r/t/-1/k"]
    assert set(report.skipped) == set(foreign) - {f"{prefix}/other_dag/r/t/-1/k"}

    scoped = gc.collect(vineyard_client, dag_id="fa_gc")
    assert scoped.reclaimed == [] and len(scoped.kept) == 6
    assert set(scoped.skipped) == {f"{prefix}/fa_gc/run/task/notanint/key", f"{prefix}/fa_gc/run/t%zz/-1/key"}
    assert all(exists(vineyard_client, oid) for oid in foreign.values())

    gc.collect(vineyard_client)
    assert set(objects(vineyard_client, prefix)) >= set(foreign) - {f"{prefix}/other_dag/r/t/-1/k"}
    assert not exists(vineyard_client, foreign[f"{prefix}/other_dag/r/t/-1/k"])


def test_cli_prints_what_it_reclaims(run_dag, vineyard_client, prefix):
    dag_run = run_gc_dag(run_dag)
    (victim,) = refs_by_row(dag_run)[("make", 0, "return_value")]
    delete_xcom(dag_run, "make", "return_value", map_index=0)

    dry = cli("--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == "Would reclaim 1 object, 7.81 KiB (dry run: nothing deleted)"
    assert "  unreferenced: 1 object, 7.81 KiB (no XCom row of its finished run refers to it)" in lines
    assert "  fa_gc: 1 object, 7.81 KiB" in lines
    assert f"  {victim['name']}  {victim['object_id']}  7.81 KiB  unreferenced" in lines
    assert lines[-1] == "Kept 5 objects, 21.09 KiB: 5 still referenced by XCom rows"
    assert exists(vineyard_client, vineyard_client.get_name(victim["name"]))

    done = cli()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "Reclaimed 1 object, 7.81 KiB"
    assert victim["name"] not in objects(vineyard_client, prefix)
    assert cli().stdout.splitlines()[0] == "Reclaimed 0 objects, 0 B"


def test_cli_reports_an_unreachable_vineyardd_in_one_paragraph(airflow_db, prefix, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_SOCKET", "/nonexistent/vineyard.sock")
    result = cli("--dry-run")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("fluid-airflow gc: error: ")
    assert "/nonexistent/vineyard.sock" in result.stderr and "Traceback" not in result.stderr


def test_delete_named_keeps_a_name_repointed_to_a_new_object(vineyard_client, prefix):
    """Release and gc list names, then delete: a retried task may repoint a name in between."""
    import numpy as np

    from fluid_airflow.vineyard.lifecycle.delete import delete_named

    name = xcom_object_name(prefix=prefix, dag_id="d", run_id="r", task_id="t", map_index=-1, key="k")
    old = vineyard_client.put(np.zeros(1000))
    new = vineyard_client.put(np.ones(1000))
    for object_id in (old, new):
        vineyard_client.persist(object_id)
    vineyard_client.put_name(new, name)  # listed as `old`; since then repointed to `new`
    delete_named(vineyard_client, name, old)
    assert not exists(vineyard_client, old)
    assert vineyard_client.get_name(name) == new and exists(vineyard_client, new)
    delete_named(vineyard_client, name, new)
    assert objects(vineyard_client, prefix) == {} and not exists(vineyard_client, new)


def test_release_run_releases_nothing_when_the_run_ran_again_since(vineyard_client, prefix):
    import numpy as np

    from fluid_airflow.vineyard.lifecycle.release import release_run, run_objects

    name = xcom_object_name(prefix=prefix, dag_id="d", run_id="r", task_id="t", map_index=-1, key="k")
    object_id = vineyard_client.put(np.zeros(1000))
    vineyard_client.persist(object_id)
    vineyard_client.put_name(object_id, name)
    report = release_run(vineyard_client, "d", "r", still_ended=lambda: False)
    assert report.skipped and report.objects == 0
    assert run_objects(vineyard_client, "d", "r") == {name: object_id} and exists(vineyard_client, object_id)
    assert release_run(vineyard_client, "d", "r", still_ended=lambda: True).names == [name]
    assert run_objects(vineyard_client, "d", "r") == {} and not exists(vineyard_client, object_id)


def test_release_cli_refuses_a_running_run_unless_forced_and_names_an_unknown_run(
    run_dag, vineyard_client, prefix
):
    """``fluid-airflow release`` of a run still running would make its consumers fail on lost inputs: it is
    refused (exit 1, the state and the fix named) and nothing is deleted; ``--force`` releases it. A run
    Airflow's DB does not know releases nothing and says so."""
    dag_run = run_gc_dag(run_dag)
    set_run_state(dag_run, "running")
    names = objects(vineyard_client, prefix)
    release = [str(SCRIPT), "release", "--dag-id", dag_run.dag_id, "--run-id", dag_run.run_id]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ), timeout=120)

    refused = run(*release)
    assert refused.returncode == 1 and "is running" in refused.stderr and "--force" in refused.stderr
    assert objects(vineyard_client, prefix) == names

    forced = run(*release, "--force")
    assert forced.returncode == 0 and f"released {len(names)} objects" in forced.stdout, forced.stderr
    assert objects(vineyard_client, prefix) == {}

    unknown = run(str(SCRIPT), "release", "--dag-id", "fa_gc", "--run-id", "no_such_run")
    assert unknown.returncode == 0 and "released 0 objects" in unknown.stdout
    assert "Airflow's DB has no DAG run fa_gc / no_such_run" in unknown.stdout, unknown.stdout
