"""FluidDatasetTrigger and FluidDatasetSensor on the real control plane (moved here from the API double).

The trigger's ``kubernetes_asyncio`` client and the sensor's sync client poll the real API server; every
phase they see is set by Fluid v1.0.8's own controllers, with worker pods placed by the real kube-scheduler
on kwok nodes. Two node pools: ``sensor-one`` (1 node) holds Dataset ``partial``, whose 2 workers cannot
both be placed (a worker takes host ports), so it stays Bound with 1 of 2 workers ready; ``sensor-two``
(1 node) holds Dataset ``demo`` with 1 worker, created while the trigger already polls. What the plane
cannot produce on demand (5xx answers, Fluid's CRDs missing, a Dataset phase ``Failed``) stays in
``tests/test_fluid_sensor.py`` on the API double.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
from airflow.sdk import DAG
from airflow.sdk.exceptions import TaskDeferred
from conftest import only_event, task_states
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import NODE_CAPACITY, connected, make_namespace, read_fluid, wait_for
from kubernetes import client

from fluid_airflow import exceptions as errors
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator
from fluid_airflow.sensors.fluid import FluidDatasetSensor
from fluid_airflow.triggers.fluid import FluidDatasetTrigger

CONN, NS = "fluid_k8s_sensor", "k8s-sensor"


def _pool(name: str) -> dict:
    """Vineyard workers go where spec.worker.nodeSelector says (fluid v1.0.8 pkg/ddc/vineyard/transform.go
    transformWorkers); a Dataset's nodeAffinity does not place them."""
    return {"nodeSelector": {"fluid-airflow.test/pool": name}}


def make(name: str, pool: str, replicas: int) -> None:
    """Dataset + VineyardRuntime ``name`` on node pool ``pool``, created without waiting."""
    FluidCreateDatasetOperator(task_id="create", dataset_name=name, placement="", fluid_conn_id=CONN).execute(
        {}
    )
    FluidBindVineyardRuntimeOperator(
        task_id="bind", dataset_name=name, fluid_conn_id=CONN, replicas=replicas, cache_capacity="1Gi",
        network_mode="", worker=_pool(pool), wait=False,
    ).execute({})  # fmt: skip


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:  # noqa: F811
    make_namespace(control_plane, NS)
    for pool in ("sensor-one", "sensor-two"):
        control_plane.create_node(f"{pool}-node", {"fluid-airflow.test/pool": pool}, NODE_CAPACITY)
    with connected(CONN, control_plane.admin_kubeconfig, NS):
        make("partial", "sensor-one", replicas=2)
        yield control_plane
        for name in ("partial", "demo"):
            FluidCleanupOperator(
                task_id="cleanup", dataset_name=name, fluid_conn_id=CONN, timeout=120, poll_interval=1
            ).execute({})


def trigger(target: str = "ready", timeout: float = 240.0, name: str = "demo", **kw) -> FluidDatasetTrigger:
    return FluidDatasetTrigger(
        fluid_conn_id=kw.pop("conn", CONN), namespace=NS, dataset_name=name, target=target,
        timeout=timeout, poll_interval=kw.pop("poll_interval", 0.5), **kw,
    )  # fmt: skip


def sensor(name: str = "demo", **kw) -> FluidDatasetSensor:
    return FluidDatasetSensor(task_id="wait", dataset_name=name, fluid_conn_id=CONN, **kw)


def test_trigger_reaches_ready_while_fluid_binds_without_blocking_the_loop(plane: ControlPlane):
    """Created just before the trigger starts: it polls through NotBound until Fluid has the worker Ready."""
    make("demo", "sensor-two", replicas=1)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main() -> dict:
        tick = asyncio.create_task(ticker())
        event = await anext(trigger().run())
        tick.cancel()
        return event.payload

    event = asyncio.run(main())
    assert event["status"] == "ready" and event["phase"] == "Bound", event
    assert "workers 1/1 ready" in event["message"], event
    assert len(ticks) >= 25 and max(b - a for a, b in itertools.pairwise(ticks)) < 0.5  # loop never blocked


def test_target_bound_versus_ready_with_fewer_workers_ready(plane: ControlPlane):
    phase = lambda: read_fluid(plane, NS, "datasets", "partial").get("status", {}).get("phase")  # noqa: E731
    wait_for("Dataset partial Bound", lambda: phase() == "Bound", 240, plane)
    bound = only_event(trigger("bound", name="partial"))
    assert (bound["status"], bound["phase"]) == ("ready", "Bound"), bound
    started = time.monotonic()
    ready = only_event(trigger("ready", name="partial", timeout=2))
    assert 2 <= time.monotonic() - started < 15
    assert (ready["status"], ready["phase"]) == ("timeout", "Bound"), ready
    assert "not ready after 2 s (phase Bound)" in ready["message"], ready
    assert "workers 1/2 ready" in ready["message"] and "PartialReady" in ready["message"], ready
    assert (sensor("partial", target="bound").poke({}), sensor("partial", target="ready").poke({})) == (
        True,
        False,
    )


def test_deadline_survives_a_triggerer_restart(plane: ControlPlane):
    first = trigger("ready", name="partial", timeout=30)  # never ready: one worker cannot be placed
    _, kwargs = first.serialize()
    kwargs["started_at"] -= 29  # the first triggerer ran for 29 s, then died
    started = time.monotonic()
    event = only_event(FluidDatasetTrigger(**kwargs))
    assert time.monotonic() - started < 10  # 1 s was left, not 30
    assert event["status"] == "timeout" and "after 30 s" in event["message"], event


def test_missing_dataset_is_failed_and_poke_raises(plane: ControlPlane):
    event = only_event(trigger(name="absent"))
    assert event["status"] == "failed" and "does not exist" in event["message"], event
    with pytest.raises(errors.FluidRuntimeFailedError, match="does not exist"):
        sensor("absent").poke({})


def test_forbidden_is_an_error_event_with_the_fix(plane: ControlPlane):
    """A real 403: a ServiceAccount whose Role may not get Datasets."""
    rule = client.V1PolicyRule(api_groups=["data.fluid.io"], resources=["vineyardruntimes"], verbs=["get"])
    role = client.V1Role(metadata=client.V1ObjectMeta(name="no-datasets"), rules=[rule])
    client.RbacAuthorizationV1Api(plane.api_client()).create_namespaced_role(NS, role)
    kubeconfig = plane.service_account_kubeconfig(NS, "blind", "no-datasets")
    with connected("fluid_k8s_blind", kubeconfig, NS):
        event = only_event(trigger(conn="fluid_k8s_blind", name="partial"))
    assert event["status"] == "error", event
    assert "HTTP 403" in event["message"] and "cannot get resource" in event["message"], event
    assert "RBAC" in event["message"], event


def test_unreachable_api_server_times_out_with_the_last_error(plane: ControlPlane, tmp_path: Path):
    """The plane's kubeconfig with the server moved to a closed port: connection refused, retried until
    the deadline."""
    config = yaml.safe_load(plane.admin_kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    with connected("fluid_k8s_gone", tmp_path / "kubeconfig", NS):
        event = only_event(trigger(conn="fluid_k8s_gone", timeout=0.3, poll_interval=1))
    assert (event["status"], event["phase"]) == ("timeout", ""), event
    assert f"no successful poll; last error: GET datasets.data.fluid.io {NS}/demo" in event["message"], event
    assert "Cannot connect" in event["message"], event


def test_deferrable_sensor_defers_to_a_serialized_trigger_that_completes(plane: ControlPlane):
    wait = sensor(target="ready", deferrable=True, poke_interval=0.5, timeout=240)
    with pytest.raises(TaskDeferred) as deferred:
        wait.execute({})
    assert deferred.value.method_name == "execute_complete"
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "fluid_airflow.triggers.fluid.FluidDatasetTrigger"
    assert {k: v for k, v in kwargs.items() if k != "started_at"} == {
        "fluid_conn_id": CONN, "namespace": NS, "dataset_name": "demo", "target": "ready",
        "timeout": 240.0, "poll_interval": 0.5, "transient_grace": 300.0,
    }  # fmt: skip
    event = only_event(FluidDatasetTrigger(**kwargs))
    assert event["status"] == "ready", event
    assert wait.execute_complete({}, event) is None


@pytest.mark.parametrize("name, state", [("demo", "success"), ("absent", "failed")])
def test_deferrable_sensor_in_a_dag_run_resumes_from_the_trigger(plane, airflow_db, tmp_path, name, state):
    """``dag.test()`` runs the deferred trigger in line (serialize, recreate, run, execute_complete)."""
    with DAG(f"fa_k8s_sensor_deferrable_{name}", schedule=None) as dag:
        sensor(name, target="ready", deferrable=True, poke_interval=0.5, timeout=240)
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(tmp_path))
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    run = dag.test()
    assert task_states(run) == {("wait", -1): state}
