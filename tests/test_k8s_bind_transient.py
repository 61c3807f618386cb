"""Defect 6 of issue 15 on the real control plane: a worker pod in ``CrashLoopBackOff`` (or an image pull
error) does not fail the bind at once, only after the grace period, and then names pod, reason and fix.

Fluid v1.0.8's controllers create the VineyardRuntime's worker StatefulSet; the real kube-scheduler places
worker-0 on the one kwok node its worker nodeSelector allows, and worker-1 stays Pending (a worker
uses host ports: one per node), so the Dataset is Bound with 1 of 2 workers ready and the bind keeps
waiting. kwok runs no container, so the test plays the kubelet's view of a crashing vineyardd: it writes
worker-0's status (``waiting: CrashLoopBackOff``, ``Ready`` False) through the status subresource, as a
kubelet does; kwok's ``pod-ready`` stage only touches Pending pods and leaves it so.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import NODE_CAPACITY, connected, make_namespace, read_fluid, wait_for

from fluid_airflow import exceptions as errors
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

CONN, NS, NAME, POOL = "fluid_k8s_transient", "k8s-transient", "flaky", "transient"
WORKER = f"{NAME}-worker-0"
# Vineyard workers go where spec.worker.nodeSelector says (fluid v1.0.8 pkg/ddc/vineyard/transform.go
# transformWorkers); a Dataset's nodeAffinity does not place them.
ONLY_OUR_NODE = {"nodeSelector": {"fluid-airflow.test/pool": POOL}}


def _bind(**kw) -> FluidBindVineyardRuntimeOperator:
    args = {
        "replicas": 2,
        "cache_capacity": "1Gi",
        "network_mode": "",
        "poll_interval": 1,
        "worker": ONLY_OUR_NODE,
    }
    return FluidBindVineyardRuntimeOperator(
        task_id="bind", dataset_name=NAME, fluid_conn_id=CONN, **{**args, **kw}
    )


def _crash(plane: ControlPlane) -> None:
    """worker-0's status as a kubelet writes it for a vineyardd that keeps exiting."""
    core = plane.core_v1()
    pod = core.read_namespaced_pod(WORKER, NS)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    waiting = {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=vineyardd"}
    statuses = [
        {
            "name": c.name,
            "image": c.image,
            "imageID": "",
            "ready": False,
            "restartCount": 3,
            "state": {"waiting": waiting},
        }
        for c in pod.spec.containers
    ]
    conditions = [
        {"type": t, "status": "False", "lastTransitionTime": now} for t in ("Ready", "ContainersReady")
    ]
    body = {"status": {"phase": "Running", "containerStatuses": statuses, "conditions": conditions}}
    core.patch_namespaced_pod_status(WORKER, NS, body)


def test_crash_loop_waits_for_the_grace_then_fails_naming_pod_reason_and_fix(control_plane: ControlPlane):  # noqa: F811
    make_namespace(control_plane, NS)
    control_plane.create_node("transient-node", {"fluid-airflow.test/pool": POOL}, NODE_CAPACITY)
    with connected(CONN, control_plane.admin_kubeconfig, NS):
        FluidCreateDatasetOperator(
            task_id="create", dataset_name=NAME, placement="", fluid_conn_id=CONN
        ).execute({})
        _bind(wait=False).execute({})
        phase = lambda: read_fluid(control_plane, NS, "datasets", NAME).get("status", {}).get("phase")  # noqa: E731
        wait_for("Dataset Bound with worker-0 ready", lambda: phase() == "Bound", 240, control_plane)
        core = control_plane.core_v1()
        assert core.read_namespaced_pod(WORKER, NS).status.phase == "Running"
        _crash(control_plane)
        try:
            # Within the grace: the bind keeps waiting and times out naming the state, not failing.
            with pytest.raises(errors.FluidTimeoutError) as waiting:
                _bind(timeout=4).execute({})
            assert f"{WORKER} CrashLoopBackOff" in str(waiting.value), waiting.value
            assert "transient: failing after 300 s" in str(waiting.value), waiting.value
            # Past the grace (here 2 s): failed, naming pod, reason and fix.
            with pytest.raises(errors.FluidRuntimeFailedError) as failed:
                _bind(timeout=30, transient_grace=2).execute({})
            text = str(failed.value)
            assert f"{WORKER} CrashLoopBackOff: back-off 40s restarting failed container=vineyardd" in text, (
                text
            )
            assert "past the 2 s grace for transient worker states" in text, text
            assert f"kubectl logs -n {NS} {WORKER} --previous" in text and "meta_timeout" in text, text
        finally:
            FluidCleanupOperator(
                task_id="cleanup", dataset_name=NAME, fluid_conn_id=CONN, timeout=120, poll_interval=1
            ).execute({})
