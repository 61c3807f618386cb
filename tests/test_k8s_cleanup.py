"""``FluidCleanupOperator`` on the real control plane (defect 5 of issue 15, and the cleanup tests that ran on
the API double).

Fluid v1.0.8's own dataset-controller decides when the Dataset may go (``pkg/utils/kubeclient/volume.go``
``ShouldDeleteDataset``: every pod mounting the PVC must be complete, and ``IsCompletePod`` in ``pod.go``
counts a pod with a ``deletionTimestamp`` as complete). Task pods are built by ``FluidPodOperator`` itself
(so they carry the labels it and KPO set), placed by the real kube-scheduler on a kwok node and made
Running by kwok. A pod stuck Terminating on a lost node is played by a pod held by a finalizer of ours:
kwok's ``pod-delete`` stage deletes it, and the API server keeps it, Terminating, until the finalizer goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from controlplane.kwok_config import ANNOTATION_RUN_FOR
from k8s_plane import NODE_CAPACITY, connected, make_namespace, read_fluid, wait_for
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException

from fluid_airflow import exceptions as errors
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.pod import FluidPodOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

CONN, NS = "fluid_k8s_cleanup", "k8s-cleanup"
HOLD = "fluid-airflow.test/hold"  # our finalizer: keeps a deleted pod Terminating


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:  # noqa: F811
    make_namespace(control_plane, NS)
    for node in ("cleanup-node-a", "cleanup-node-b"):  # a Dataset's master may still hold its host ports
        control_plane.create_node(node, {"fluid-airflow.test/pool": "cleanup"}, NODE_CAPACITY)
    with connected(CONN, control_plane.admin_kubeconfig, NS):
        yield control_plane


def _bind(plane: ControlPlane, name: str) -> None:
    """Create + bind ``name`` with our operators; Fluid binds it and creates its PVC."""
    FluidCreateDatasetOperator(task_id="create", dataset_name=name, placement="", fluid_conn_id=CONN).execute(
        {}
    )
    FluidBindVineyardRuntimeOperator(
        task_id="bind", dataset_name=name, fluid_conn_id=CONN, replicas=1, cache_capacity="1Gi",
        network_mode="", timeout=240, poll_interval=1,
    ).execute({})  # fmt: skip
    core = plane.core_v1()
    names = lambda: [p.metadata.name for p in core.list_namespaced_persistent_volume_claim(NS).items]  # noqa: E731
    wait_for(f"PVC {name} created by Fluid", lambda: name in names(), 60, plane)


def _context(dag_id: str, run_id: str) -> dict[str, Any]:
    from airflow.sdk import DAG

    dag = DAG(dag_id, schedule=None)
    ti = SimpleNamespace(dag_id=dag_id, task_id="train", run_id=run_id, map_index=-1, try_number=1)
    return {"ti": ti, "run_id": run_id, "dag": dag}


def _task_pod(plane: ControlPlane, dataset: str, pod_name: str, context: dict[str, Any], **meta: Any) -> str:
    """Create the pod FluidPodOperator builds for ``context``'s DAG run (plus ``meta``) and wait until
    it runs on a kwok node."""
    op = FluidPodOperator(task_id="train", image="busybox", cmds=["true"], dataset_name=dataset,
                          fluid_conn_id=CONN, name=pod_name, random_name_suffix=False,
                          config_file=str(plane.admin_kubeconfig))  # fmt: skip
    pod = op.build_pod_request_obj(context)
    pod.metadata.annotations = {ANNOTATION_RUN_FOR: "1h"}  # kwok keeps a KPO pod Running this long
    for key, value in meta.items():
        setattr(pod.metadata, key, value)
    core = plane.core_v1()
    core.create_namespaced_pod(NS, ApiClient().sanitize_for_serialization(pod))
    running = lambda: core.read_namespaced_pod(pod_name, NS).status.phase == "Running"  # noqa: E731
    wait_for(f"pod {pod_name} Running", running, 60, plane)
    return pod_name


def _pod(plane: ControlPlane, name: str) -> client.V1Pod | None:
    try:
        return plane.core_v1().read_namespaced_pod(name, NS)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _cleanup(name: str, context: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    op = FluidCleanupOperator(task_id="cleanup", dataset_name=name, fluid_conn_id=CONN, timeout=timeout,
                              poll_interval=1)  # fmt: skip
    return op.execute(context)


def test_cleanup_deletes_its_own_pods_and_counts_terminating_ones_as_gone(plane: ControlPlane):
    """This run's pod is deleted; a pod stuck Terminating does not block (Fluid deletes the Dataset anyway);
    then the Dataset and the VineyardRuntime are gone."""
    name, context = "clean-own", _context("fa_cleanup", "manual__2026-12-04T19:00:00+00:00")
    _bind(plane, name)
    own = _task_pod(plane, name, "own-task", context)
    stuck = _task_pod(plane, name, "stuck-task", _context("fa_other", "manual__other"), finalizers=[HOLD])
    core = plane.core_v1()
    core.delete_namespaced_pod(stuck, NS)
    wait_for("pod stuck-task Terminating", lambda: _pod(plane, stuck).metadata.deletion_timestamp, 30, plane)
    try:
        result = _cleanup(name, context, timeout=90)
        assert result == {"pods": [own], "dataset": True, "runtime": True}
        assert _pod(plane, own) is None or _pod(plane, own).metadata.deletion_timestamp
        assert _pod(plane, stuck).metadata.deletion_timestamp  # still there, never waited for
        with pytest.raises(ApiException) as gone:
            read_fluid(plane, NS, "datasets", name)
        assert gone.value.status == 404
    finally:
        core.patch_namespaced_pod(stuck, NS, {"metadata": {"finalizers": None}})


def test_cleanup_never_deletes_pods_it_did_not_create(plane: ControlPlane):
    """A Running pod of another DAG run and a user's pod that mount the PVC are named and waited for
    (bounded), never deleted; once their owners delete them, a re-run of the cleanup finishes."""
    name, context = "clean-others", _context("fa_cleanup", "manual__mine")
    _bind(plane, name)
    other_run = _task_pod(plane, name, "other-run-task", _context("fa_cleanup", "manual__theirs"))
    user = _task_pod(plane, name, "user-pod", context, labels={"app": "notebook"})
    with pytest.raises(errors.FluidTimeoutError) as blocked:
        _cleanup(name, context, timeout=5)
    text = str(blocked.value)
    assert "pods mounting PVC k8s-cleanup/clean-others still not deleted after 5 s" in text, text
    other = (
        "pod other-run-task (Running, not created by this DAG run: dag_id=fa_cleanup, run_id=manual__theirs)"
    )
    assert other in text, text
    assert "pod user-pod (Running, not created by this DAG run: no DAG run labels)" in text, text
    for pod in (other_run, user):
        assert _pod(plane, pod).metadata.deletion_timestamp is None, pod
    assert read_fluid(plane, NS, "datasets", name)["metadata"].get("deletionTimestamp") is None

    for pod in (other_run, user):  # their owners finish with them
        plane.core_v1().delete_namespaced_pod(pod, NS)
    assert _cleanup(name, context) == {"pods": [], "dataset": True, "runtime": True}
