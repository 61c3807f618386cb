"""Readiness rules for a Dataset + VineyardRuntime (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fluid_airflow.fluid.status import FAILED, PENDING, READY, TRANSIENT_GRACE, evaluate


def dataset(phase="Bound", deleting=False, conditions=None):
    meta = {"name": "ds", "namespace": "ns"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-29T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, "conditions": conditions or []}}


def runtime(replicas=2, ready=2, worker_phase="Ready"):
    return {
        "spec": {"replicas": replicas},
        "status": {"masterPhase": "Ready", "workerPhase": worker_phase, "workerNumberReady": ready},
    }


def pod(name, phase="Running", waiting=None, conditions=None):
    status = {"phase": phase, "conditions": conditions or []}
    if waiting:
        status["containerStatuses"] = [{"state": {"waiting": {"reason": waiting, "message": "back-off"}}}]
    return {"metadata": {"name": name}, "status": status}


def test_bound_with_all_workers_ready_is_ready():
    assert evaluate(dataset(), runtime(), [pod("ds-worker-0"), pod("ds-worker-1")]).state == READY


def test_bound_with_fewer_workers_ready_is_still_pending():
    verdict = evaluate(dataset(), runtime(ready=1, worker_phase="PartialReady"), [pod("ds-worker-0")])
    assert verdict.state == PENDING and "workers 1/2 ready" in verdict.message


def test_not_bound_is_pending_and_names_conditions_and_pending_pods():
    unschedulable = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
    ]
    verdict = evaluate(
        dataset("NotBound", conditions=[{"type": "Ready", "status": "False", "reason": "DatasetNotReady"}]),
        runtime(ready=0, worker_phase="NotReady"),
        [pod("ds-worker-1", phase="Pending", conditions=unschedulable)],
    )
    assert verdict.state == PENDING
    assert "NotBound" in verdict.message and "DatasetNotReady" in verdict.message
    assert "ds-worker-1 Pending (Unschedulable: 0/3 nodes)" in verdict.message


def test_master_pod_running_but_not_ready_is_named():
    """The runtime's pods include its master: a master that never turns Ready is named with the
    reason its Ready condition gives, so a bind that times out says which pod held it up."""
    not_ready = [{"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "etcd"}]
    verdict = evaluate(
        dataset("NotBound"),
        runtime(ready=0, worker_phase="NotReady"),
        [pod("ds-master-0", conditions=not_ready), pod("ds-worker-0")],
    )
    assert verdict.state == PENDING
    assert "pods not ready: ds-master-0 Running, not Ready (ContainersNotReady: etcd)" in verdict.message


def test_failed_dataset_or_hopeless_pod_is_failed():
    assert evaluate(dataset("Failed"), runtime(), []).state == FAILED
    verdict = evaluate(
        dataset("NotBound"), runtime(ready=0), [pod("ds-worker-0", "Pending", "InvalidImageName")]
    )
    assert verdict.state == FAILED and "ds-worker-0 InvalidImageName" in verdict.message


def test_transient_worker_states_fail_only_after_the_grace():
    """CrashLoopBackOff and image pull errors are pending for TRANSIENT_GRACE seconds after the pod
    stopped being Ready, then failed with the fix."""
    since = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    not_ready = [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-12-04T12:00:00Z"}]
    for reason in ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff"):
        worker = pod("ds-worker-0", "Running", reason, conditions=not_ready)
        early = evaluate(dataset("NotBound"), runtime(ready=0), [worker], now=since + timedelta(seconds=299))
        assert (
            early.state == PENDING
            and f"ds-worker-0 {reason}: back-off (for 299 s, transient" in early.message
        )
        late = evaluate(dataset("NotBound"), runtime(ready=0), [worker], now=since + timedelta(seconds=300))
        assert late.state == FAILED and "past the 300 s grace" in late.message, late.message
    assert TRANSIENT_GRACE == 300


def test_missing_or_deleting_dataset_is_failed_and_missing_runtime_pending():
    assert evaluate(None, None, []).state == FAILED
    assert evaluate(dataset(deleting=True), runtime(), []).state == FAILED
    assert evaluate(dataset("NotBound"), None, []).state == PENDING
