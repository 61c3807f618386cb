"""The Fluid operators and FluidHook on the real control plane (moved here from the API double).

Create, adopt and conflict of a Dataset; bind and wait, with the phases set by Fluid v1.0.8's own
controllers (worker pods placed by the real kube-scheduler on kwok nodes); a bind that times out naming
the worker the scheduler cannot place; what the handoffs page lists; and a DAG whose bind waits deferred
in the trigger. Cleanup: ``tests/test_k8s_cleanup.py``; adoption of Fluid's normalised spec:
``tests/test_k8s_adopt.py``; transient worker states: ``tests/test_k8s_bind_transient.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from conftest import task_states, xcom_rows
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import GROUP, NODE_CAPACITY, VERSION, connected, make_namespace, read_fluid, wait_for
from kubernetes import client

from fluid_airflow import exceptions as errors
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

CONN, NS, POOL = "fluid_k8s_ops", "k8s-ops", "ops"
NODES = ("ops-node-a", "ops-node-b")
# Vineyard workers go where spec.worker.nodeSelector says (fluid v1.0.8 pkg/ddc/vineyard/transform.go
# transformWorkers); a Dataset's nodeAffinity does not place them.
ON_OUR_NODES = {"nodeSelector": {"fluid-airflow.test/pool": POOL}}


def create_op(name: str, **kw) -> FluidCreateDatasetOperator:
    return FluidCreateDatasetOperator(
        task_id="create",
        dataset_name=name,
        placement="",
        fluid_conn_id=CONN,
        **kw,
    )


def bind_op(name: str, **kw) -> FluidBindVineyardRuntimeOperator:
    args = {"replicas": 2, "cache_capacity": "2Gi", "network_mode": "", "timeout": 240, "poll_interval": 1,
            "worker": ON_OUR_NODES}  # fmt: skip
    return FluidBindVineyardRuntimeOperator(
        task_id="bind", dataset_name=name, fluid_conn_id=CONN, **{**args, **kw}
    )


def cleanup(name: str) -> None:
    FluidCleanupOperator(
        task_id="cleanup", dataset_name=name, fluid_conn_id=CONN, timeout=120, poll_interval=1
    ).execute({})


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:  # noqa: F811
    make_namespace(control_plane, NS)
    for node in NODES:
        control_plane.create_node(node, {"fluid-airflow.test/pool": POOL}, NODE_CAPACITY)
    with connected(CONN, control_plane.admin_kubeconfig, NS):
        yield control_plane


def _stored(plane: ControlPlane, plural: str) -> list[str]:
    found = client.CustomObjectsApi(plane.api_client()).list_namespaced_custom_object(
        GROUP, VERSION, NS, plural
    )
    return [o["metadata"]["name"] for o in found["items"]]


def test_bad_input_fails_before_any_request(plane: ControlPlane):
    with pytest.raises(errors.FluidSpecError, match="DNS-1035"):
        create_op("Flights_2013").execute({})
    with pytest.raises(errors.FluidSpecError, match="Kubernetes quantity"):
        bind_op("flights", cache_capacity="30GB").execute({})
    with pytest.raises(errors.FluidSpecError, match="replicas"):
        bind_op("flights", replicas=0).execute({})
    with pytest.raises(errors.FluidSpecError, match="Shorten"):
        create_op("a" * 45).execute({})
    assert _stored(plane, "datasets") == [] and _stored(plane, "vineyardruntimes") == []


def test_create_adopt_conflict_bind_and_phases(plane: ControlPlane, monkeypatch: pytest.MonkeyPatch):
    """A Dataset created, adopted by a re-run, refused with another spec; the bind waits until Fluid has
    Bound it with both workers Ready on our two kwok nodes; the handoffs page lists both objects."""
    from fluid_airflow.ui.api import _fluid_phases

    first = create_op("flights").execute({})
    try:
        assert first["created"] is True and first["uid"]
        assert create_op("flights").execute({})["created"] is False
        assert read_fluid(plane, NS, "datasets", "flights")["spec"]["accessModes"] == ["ReadWriteMany"]
        with pytest.raises(errors.FluidConflictError, match="different spec"):
            create_op("flights", access_modes=["ReadOnlyMany"]).execute({})

        result = bind_op("flights").execute({})
        assert result == {
            "namespace": NS, "name": "flights", "backend": "kubernetes",
            "mount_path": "/var/run/vineyard", "ipc_socket": None,
        }  # fmt: skip
        runtime = read_fluid(plane, NS, "vineyardruntimes", "flights")
        assert runtime["status"]["workerNumberReady"] == 2 and runtime["status"]["workerPhase"] == "Ready"
        assert read_fluid(plane, NS, "datasets", "flights")["status"]["phase"] == "Bound"
        workers = plane.core_v1().list_namespaced_pod(
            NS, label_selector="release=flights,role=vineyard-worker"
        )
        assert sorted(p.spec.node_name for p in workers.items) == sorted(NODES)

        monkeypatch.setenv("AIRFLOW_CONN_FLUID_DEFAULT", os.environ[f"AIRFLOW_CONN_{CONN.upper()}"])
        shown = _fluid_phases()
        assert shown["backend"] == "kubernetes"
        phases = {(r["kind"], r["name"], r["namespace"]): r["phase"] for r in shown["resources"]}
        assert phases == {
            ("Dataset", "flights", NS): "Bound",
            ("VineyardRuntime", "flights", NS): "master Ready, workers Ready",
        }
    finally:
        cleanup("flights")
    assert _stored(plane, "datasets") == [] and _stored(plane, "vineyardruntimes") == []


def test_bound_with_a_missing_worker_times_out_naming_it(plane: ControlPlane):
    """Three workers, two nodes: Fluid binds with two, the scheduler cannot place the third (a worker
    takes host ports), and the bind times out naming it and the scheduler's reason."""
    create_op("short").execute({})
    try:
        bind_op("short", replicas=3, wait=False).execute({})
        phase = lambda: read_fluid(plane, NS, "datasets", "short").get("status", {}).get("phase")  # noqa: E731
        wait_for("Dataset short Bound", lambda: phase() == "Bound", 240, plane)
        with pytest.raises(errors.FluidTimeoutError) as err:
            bind_op("short", replicas=3, timeout=3).execute({})
        message = str(err.value)
        assert "Dataset phase Bound" in message and "workers 2/3 ready" in message, message
        # which ordinal waits depends on the StatefulSet's parallel pod management: any one of them
        unplaced = (
            r"short-worker-\d Pending \(Unschedulable: 0/2 nodes are available: 2 node\(s\) didn't have free"
        )
        assert re.search(unplaced, message), message
    finally:
        cleanup("short")


def test_deferrable_dag_through_the_trigger(control_plane: ControlPlane, run_dag):  # noqa: F811
    """DAG fa_fluid_k8s: the bind defers to FluidDatasetTrigger until Fluid has the Dataset ready; the
    teardown cleanup removes it."""
    ns = make_namespace(control_plane, "k8s-dag")
    # nodes of its own: a VineyardRuntime's master and workers use host ports
    for node in ("dag-node-a", "dag-node-b"):
        control_plane.create_node(node, {"fluid-airflow.test/pool": "dag"}, NODE_CAPACITY)
    with connected("fluid_k8s_test", control_plane.admin_kubeconfig, ns):
        dr = run_dag("fa_fluid_k8s")
    assert str(dr.state) == "success", task_states(dr)
    got = {(x.task_id, x.key): x.value for x in xcom_rows(dr.dag_id, dr.run_id)}
    assert got[("use", "return_value")] == f"{ns}/flights at /var/run/vineyard"
    assert got[("cleanup", "return_value")] == {"pods": [], "dataset": True, "runtime": True}
    co = client.CustomObjectsApi(control_plane.api_client())
    for plural in ("datasets", "vineyardruntimes"):
        assert co.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"] == []
