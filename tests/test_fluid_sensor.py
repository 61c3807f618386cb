"""FluidDatasetTrigger and FluidDatasetSensor: what the real control plane cannot produce on demand, on the
Kubernetes API test double (``k8s_double``): 5xx answers, Fluid's CRDs missing, a Dataset phase ``Failed``;
and the parts that need no API server (parameters, connections, the local backend, ``execute_complete``).
Everything else runs on the real control plane: ``tests/test_k8s_sensor.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from conftest import only_event
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


def sensor(**kw) -> FluidDatasetSensor:
    return FluidDatasetSensor(task_id="wait", dataset_name="demo", fluid_conn_id=CONN, **kw)


def dataset_gets(double) -> int:
    return sum(r.method == "GET" and r.path.endswith("/datasets/demo") for r in double.requests)


# -- trigger ------------------------------------------------------------------------------------


def test_missing_crds_are_an_error_event_with_the_fix(double, custom):
    """Not a missing Dataset: the resource type itself is gone (a real 403 is in test_k8s_sensor.py)."""
    make(custom)
    double.uninstall_fluid()
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
def test_a_failed_dataset_makes_poke_raise_and_the_trigger_fail(double, custom):
    """Dataset phase Failed, which Fluid's controllers set only on errors this control plane cannot cause."""
    double.fluid.ready_after = 60
    make(custom)
    wait = sensor(target="bound")
    assert wait.poke({}) is False
    double.fluid.fail_runtime("demo", message="etcd unreachable")
    with pytest.raises(errors.FluidRuntimeFailedError, match=r"default/demo failed.*etcd unreachable"):
        wait.poke({})
    event = only_event(trigger())
    assert (event["status"], event["phase"]) == ("failed", "Failed"), event
    assert "Dataset default/demo failed" in event["message"] and "etcd unreachable" in event["message"]


RAISES = {"failed": errors.FluidRuntimeFailedError, "timeout": errors.FluidTimeoutError}


@pytest.mark.parametrize("state", ["failed", "timeout", "error", "surprise"])
def test_execute_complete_raises_by_event_status(state):
    event = {"status": state, "phase": "NotBound", "message": f"msg-{state}", "namespace": NS}
    with pytest.raises(RAISES.get(state, errors.FluidApiError), match=f"msg-{state}"):
        sensor(deferrable=True).execute_complete({}, event)
