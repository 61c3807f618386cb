"""FluidDatasetTrigger and FluidDatasetSensor against the Kubernetes API test double (``k8s_double``).

The double speaks the real REST API and simulates Fluid's controllers (fluid.md 2.1, 2.2, 3), so the
trigger's ``kubernetes_asyncio`` client and the sensor's sync client run unchanged against it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator

import pytest
from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
from airflow.sdk import DAG
from airflow.sdk.exceptions import TaskDeferred
from conftest import task_states
from k8s_double import KubeApiDouble
from kubernetes import client, config

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid import manifests
from fluid_airflow.hooks.fluid import FluidHook
from fluid_airflow.sensors.fluid import FluidDatasetSensor
from fluid_airflow.triggers.fluid import MAX_TRANSIENT_ERRORS, FluidDatasetTrigger

G, V, NS, CONN = manifests.GROUP, manifests.VERSION, "default", "fluid_double"


@pytest.fixture
def double() -> Iterator[KubeApiDouble]:
    """A started Kubernetes API test double (Fluid installed, nothing stored)."""
    with KubeApiDouble() as started:
        yield started


@pytest.fixture
def custom(double, tmp_path, monkeypatch) -> Iterator[client.CustomObjectsApi]:
    """A ``fluid`` connection to the double (env var) and a sync client for setting up objects."""
    kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig")
    extra = {"kube_config_path": str(kubeconfig), "namespace": NS}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps({"conn_type": "fluid", "extra": extra}))
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield client.CustomObjectsApi(api)  # conftest restores the kubernetes client's default config
    api.close()


def make(custom: client.CustomObjectsApi, name: str = "demo", replicas: int = 2) -> None:
    """A Dataset and its VineyardRuntime, as the project's manifest builders write them."""
    custom.create_namespaced_custom_object(G, V, NS, "datasets", manifests.build_dataset(name, NS))
    body = manifests.build_vineyard_runtime(name, NS, cache_capacity="1Gi", replicas=replicas)
    custom.create_namespaced_custom_object(G, V, NS, "vineyardruntimes", body)


def trigger(target: str = "ready", timeout: float = 10.0, name: str = "demo", **kw) -> FluidDatasetTrigger:
    return FluidDatasetTrigger(
        fluid_conn_id=kw.pop("conn", CONN), namespace=NS, dataset_name=name, target=target,
        timeout=timeout, poll_interval=kw.pop("poll_interval", 0.1), **kw,
    )  # fmt: skip


def only_event(trig: FluidDatasetTrigger) -> dict:
    """Run the trigger to its end; it must yield exactly one event."""

    async def events() -> list[dict]:
        return [event.payload async for event in trig.run()]

    found = asyncio.run(events())
    assert len(found) == 1, found
    assert (found[0]["namespace"], found[0]["dataset_name"]) == (NS, trig.dataset_name)
    return found[0]


def sensor(**kw) -> FluidDatasetSensor:
    return FluidDatasetSensor(task_id="wait", dataset_name="demo", fluid_conn_id=CONN, **kw)


def dataset_gets(double) -> int:
    return sum(r.method == "GET" and r.path.endswith("/datasets/demo") for r in double.requests)


# -- trigger ------------------------------------------------------------------------------------
def test_trigger_reaches_ready_after_ready_after_without_blocking_the_loop(double, custom):
    double.fluid.ready_after = 1.0
    make(custom)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main() -> dict:
        tick = asyncio.create_task(ticker())
        event = await anext(trigger().run())
        tick.cancel()
        return event

    started = time.monotonic()
    event = asyncio.run(main()).payload
    assert event["status"] == "ready" and event["phase"] == "Bound", event
    assert "workers 2/2 ready" in event["message"]
    assert time.monotonic() - started >= 1.0
    assert dataset_gets(double) >= 3  # it polled, and it polled over HTTP
    assert len(ticks) >= 25 and max(b - a for a, b in itertools.pairwise(ticks)) < 0.5  # loop never blocked


def test_trigger_times_out_naming_the_phase(double, custom):
    double.fluid.ready_after = 60
    make(custom)
    started = time.monotonic()
    event = only_event(trigger(timeout=0.5))
    assert 0.5 <= time.monotonic() - started < 5
    assert (event["status"], event["phase"]) == ("timeout", "NotBound"), event
    assert "not ready after 0.5 s (phase NotBound)" in event["message"]
    assert "workers 0/2 ready" in event["message"]


def test_deadline_survives_a_triggerer_restart(double, custom):
    make(custom)
    double.fluid.paused = True  # nothing ever gets Bound
    first = trigger(timeout=30)
    _, kwargs = first.serialize()
    kwargs["started_at"] -= 29.8  # the first triggerer ran for 29.8 s, then died
    started = time.monotonic()
    event = only_event(FluidDatasetTrigger(**kwargs))
    assert time.monotonic() - started < 5  # 0.2 s were left, not 30
    assert event["status"] == "timeout" and "after 30 s" in event["message"]


def test_target_bound_versus_ready_with_fewer_workers_ready(double, custom):
    double.fluid.workers_ready = 1
    make(custom, replicas=3)
    bound = only_event(trigger("bound"))
    assert (bound["status"], bound["phase"]) == ("ready", "Bound"), bound
    ready = only_event(trigger("ready", timeout=0.4))
    assert (ready["status"], ready["phase"]) == ("timeout", "Bound"), ready
    assert "workers 1/3 ready" in ready["message"] and "PartialReady" in ready["message"]
    assert (sensor(target="bound").poke({}), sensor(target="ready").poke({})) == (True, False)
    double.fluid.workers_ready = None
    assert sensor(target="ready").poke({}) is True


def test_missing_dataset_is_failed_and_poke_raises(double, custom):
    event = only_event(trigger(name="absent"))
    assert event["status"] == "failed" and "does not exist" in event["message"], event
    with pytest.raises(errors.FluidRuntimeFailedError, match="does not exist"):
        sensor().poke({})


def test_forbidden_or_missing_crds_are_error_events_with_the_fix(double, custom):
    make(custom)
    double.inject("GET", r"/datasets/demo$", 403)
    event = only_event(trigger())
    assert event["status"] == "error", event
    assert "HTTP 403" in event["message"] and "cannot get resource" in event["message"]
    assert "RBAC" in event["message"]
    double.uninstall_fluid()  # not a missing Dataset: the resource type itself is gone
    event = only_event(trigger())
    assert event["status"] == "error" and "CRDs are not installed" in event["message"], event


def test_transient_errors_are_retried_then_reported(double, custom):
    make(custom)
    double.inject("GET", r"/vineyardruntimes/demo$", 503, times=2)
    assert only_event(trigger(poll_interval=0.02))["status"] == "ready"
    double.inject("GET", r"/datasets/demo$", 500, times=100)
    event = only_event(trigger(poll_interval=0.02))
    assert event["status"] == "error" and "HTTP 500" in event["message"], event
    assert f"{MAX_TRANSIENT_ERRORS + 1} failures in a row" in event["message"]


def test_unreachable_api_server_times_out_with_the_last_error(double, custom):
    double.stop()  # connection refused: transient, retried until the deadline
    event = only_event(trigger(timeout=0.3, poll_interval=1))
    assert (event["status"], event["phase"]) == ("timeout", ""), event
    assert "no successful poll; last error: GET datasets.data.fluid.io default/demo" in event["message"]
    assert "Cannot connect" in event["message"]


def test_bad_connection_or_kubeconfig_is_an_error_event(custom, monkeypatch, tmp_path):
    event = only_event(trigger(conn="no_such_connection"))
    assert event["status"] == "error" and "no_such_connection" in event["message"], event
    extra = {"kube_config_path": str(tmp_path / "missing-kubeconfig")}
    monkeypatch.setenv("AIRFLOW_CONN_FLUID_BADCFG", json.dumps({"conn_type": "fluid", "extra": extra}))
    event = only_event(trigger(conn="fluid_badcfg"))
    assert event["status"] == "error", event
    assert "fluid_badcfg" in event["message"] and "missing-kubeconfig does not exist" in event["message"]


def test_parameters_and_serialize_round_trip_through_the_classpath(custom):
    classpath, kwargs = trigger("bound", timeout=42, poll_interval=3).serialize()
    module, _, cls = classpath.rpartition(".")
    rebuilt = getattr(__import__(module, fromlist=[cls]), cls)(**kwargs)
    assert isinstance(rebuilt, FluidDatasetTrigger) and rebuilt.serialize() == (classpath, kwargs)
    assert {k: kwargs[k] for k in ("fluid_conn_id", "namespace", "dataset_name", "target")} == {
        "fluid_conn_id": CONN, "namespace": NS, "dataset_name": "demo", "target": "bound",
    }  # fmt: skip
    assert (kwargs["timeout"], kwargs["poll_interval"]) == (42.0, 3.0)
    with pytest.raises(errors.FluidSpecError, match="target"):
        trigger("running")
    wait = sensor()
    assert wait.template_fields == ("dataset_name", "namespace")
    assert (wait.target, wait.namespace, wait.deferrable) == ("bound", None, False)
    with pytest.raises(errors.FluidSpecError):
        sensor(target="Bound")


def test_local_backend_polls_in_a_worker_thread(monkeypatch, runtime):
    extra = {"backend": "local", "namespace": NS, "local_max_cache": "64Mi"}
    monkeypatch.setenv("AIRFLOW_CONN_FLUID_LOCAL_T", json.dumps({"conn_type": "fluid", "extra": extra}))
    monkeypatch.setenv("AIRFLOW__FLUID__RUNTIME_DIR", str(runtime))
    hook = FluidHook("fluid_local_t")
    threads: list[threading.Thread] = []
    readiness = FluidHook.readiness

    def spy(self: FluidHook, *args: str) -> object:
        return threads.append(threading.current_thread()) or readiness(self, *args)

    monkeypatch.setattr(FluidHook, "readiness", spy)
    hook.ensure(manifests.DATASET_PLURAL, manifests.build_dataset("demo", NS))
    try:
        body = manifests.build_vineyard_runtime("demo", NS, cache_capacity="1Gi", replicas=1)
        hook.ensure(manifests.RUNTIME_PLURAL, body)
        event = only_event(trigger(conn="fluid_local_t"))
        assert event["status"] == "ready", event
        assert threads and threading.main_thread() not in threads
    finally:
        for plural in (manifests.DATASET_PLURAL, manifests.RUNTIME_PLURAL):
            hook.client.delete(plural, NS, "demo")


# -- sensor -------------------------------------------------------------------------------------
def test_poke_false_then_true_then_raises_and_trigger_fails_on_failure(double, custom):
    double.fluid.ready_after = 60
    make(custom)
    wait = sensor(target="bound")
    assert wait.poke({}) is False
    double.advance(61)
    assert wait.poke({}) is True
    double.fluid.fail_runtime("demo", message="etcd unreachable")
    with pytest.raises(errors.FluidRuntimeFailedError, match=r"default/demo failed.*etcd unreachable"):
        wait.poke({})
    event = only_event(trigger())
    assert (event["status"], event["phase"]) == ("failed", "Failed"), event
    assert "Dataset default/demo failed" in event["message"] and "etcd unreachable" in event["message"]


def test_deferrable_sensor_defers_to_a_serialized_trigger_that_completes(double, custom):
    double.fluid.ready_after = 0.5
    make(custom)
    wait = sensor(target="ready", deferrable=True, poke_interval=0.1, timeout=20)
    with pytest.raises(TaskDeferred) as deferred:
        wait.execute({})
    assert deferred.value.method_name == "execute_complete"
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "fluid_airflow.triggers.fluid.FluidDatasetTrigger"
    assert {k: v for k, v in kwargs.items() if k != "started_at"} == {
        "fluid_conn_id": CONN, "namespace": NS, "dataset_name": "demo", "target": "ready",
        "timeout": 20.0, "poll_interval": 0.1,
    }  # fmt: skip
    event = only_event(FluidDatasetTrigger(**kwargs))
    assert event["status"] == "ready"
    assert wait.execute_complete({}, event) is None


RAISES = {"failed": errors.FluidRuntimeFailedError, "timeout": errors.FluidTimeoutError}


@pytest.mark.parametrize("state", ["failed", "timeout", "error", "surprise"])
def test_execute_complete_raises_by_event_status(state):
    event = {"status": state, "phase": "NotBound", "message": f"msg-{state}", "namespace": NS}
    with pytest.raises(RAISES.get(state, errors.FluidApiError), match=f"msg-{state}"):
        sensor(deferrable=True).execute_complete({}, event)


@pytest.mark.parametrize("fail", [False, True], ids=["ready", "failed"])
def test_deferrable_sensor_in_a_dag_run_resumes_from_the_trigger(double, custom, airflow_db, tmp_path, fail):
    """``dag.test()`` runs the deferred trigger in line (serialize, recreate, run, execute_complete)."""
    double.fluid.ready_after = 0.5
    make(custom)
    if fail:
        double.fluid.fail_runtime("demo")
    with DAG(f"fa_fluid_sensor_deferrable_{fail}", schedule=None) as dag:
        sensor(target="ready", deferrable=True, poke_interval=0.1, timeout=30)
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(tmp_path))
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    run = dag.test()
    assert task_states(run) == {("wait", -1): "failed" if fail else "success"}
    assert dataset_gets(double) >= 1
