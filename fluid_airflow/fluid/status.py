"""Readiness of a Dataset and its VineyardRuntime, from their status (pure functions).

Fluid marks a Dataset ``Bound`` once the runtime's master and at least one worker are ready
(docs/design.md §16), and its Vineyard health check counts a partially ready worker set as ready,
so ``Bound`` alone does not mean the cache is usable. Ready here means: Dataset ``Bound`` **and**
the VineyardRuntime's ``workerNumberReady`` reaches ``spec.replicas`` with ``workerPhase: Ready``.
Failed means: Dataset ``Failed``, the Dataset being deleted, a runtime pod (master or worker) that
cannot start (an invalid image name, a container that cannot be created) or has failed, or such a
pod in a transient state (``CrashLoopBackOff``, image pull errors) for longer than the grace period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

READY, PENDING, FAILED = "ready", "pending", "failed"
# Container waiting reasons that do not resolve by waiting.
_HOPELESS = {"InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
# Waiting reasons that do resolve by waiting, often: a vineyardd worker exits when etcd (the
# VineyardRuntime master) has not answered within its meta_timeout (v6d v0.22.2
# src/server/services/meta_service.cc IMetaService::Start), and the kubelet restarts it with a
# back-off (CrashLoopBackOff) until etcd answers; a registry hiccup gives ErrImagePull, then
# ImagePullBackOff, until a retry succeeds.
_TRANSIENT = {
    "CrashLoopBackOff": "see its log (kubectl logs -n {ns} {pod} --previous): vineyardd exits when etcd, "
    "the VineyardRuntime's master, does not answer within its meta_timeout; check the master pod",
    "ErrImagePull": "check the image name and tag, the registry's reachability and the pull secret",
    "ImagePullBackOff": "check the image name and tag, the registry's reachability and the pull secret",
}
# Seconds a worker may stay in a transient state before it counts as failed. Fluid v1.0.8's
# vineyard chart starts vineyardd with --meta_timeout 120 (charts/vineyard/templates/worker/
# statefulset.yaml, option wait.etcd.timeout), and the kubelet's crash back-off starts at 10 s and
# doubles (k8s v1.36 pkg/kubelet/apis/config/v1beta1/defaults.go, MaxContainerBackOff 300 s):
# two full etcd waits plus the first back-offs (2 x 120 + 10 + 20 s) fit in 300 s.
TRANSIENT_GRACE = 300.0


@dataclass(frozen=True)
class Readiness:
    """Verdict plus a one-paragraph description naming phases, conditions and pods."""

    state: str
    phase: str
    message: str

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def failed(self) -> bool:
        return self.state == FAILED


def _conditions(obj: dict[str, Any]) -> str:
    parts = []
    for c in (obj.get("status") or {}).get("conditions") or []:
        text = f"{c.get('type')}={c.get('status', '?')}"
        if c.get("reason") or c.get("message"):
            text += f" ({c.get('reason', '')}: {c.get('message', '')})".replace("(: ", "(")
        parts.append(text)
    return ", ".join(parts) or "none"


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def not_ready_since(pod: dict[str, Any]) -> datetime | None:
    """When ``pod`` last stopped being Ready: its ``Ready`` condition's ``lastTransitionTime`` when
    that is False, else its ``startTime``, else its ``creationTimestamp``."""
    status = pod.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready and ready.get("status") != "True" and _time(ready.get("lastTransitionTime")):
        return _time(ready["lastTransitionTime"])
    return _time(status.get("startTime")) or _time((pod.get("metadata") or {}).get("creationTimestamp"))


def pod_problem(
    pod: dict[str, Any], now: datetime | None = None, grace: float = TRANSIENT_GRACE
) -> tuple[str, str] | None:
    """``(kind, text)`` for a runtime pod (master or worker) that is not running, or running but
    not Ready: kind ``failed`` or ``pending``; ``None`` for a pod that is fine.

    A transient waiting reason (``CrashLoopBackOff``, ``ErrImagePull``, ``ImagePullBackOff``) is
    pending for ``grace`` seconds after the pod stopped being Ready (:func:`not_ready_since`), then
    failed, with the fix named. ``now``: default the current time (UTC).
    """
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name = meta.get("name", "?")
    phase = status.get("phase", "Pending")
    if phase == "Failed":
        return FAILED, f"{name} Failed ({status.get('reason') or status.get('message') or 'no reason'})"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in _HOPELESS:
            return FAILED, f"{name} {reason}: {waiting.get('message', '')}".rstrip(": ")
        if reason in _TRANSIENT:
            return _transient(pod, reason, str(waiting.get("message") or ""), now, grace)
    if phase == "Running":
        ready: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        if ready.get("status") == "False":  # running, but its readiness probe (or kubelet) says no
            said = ": ".join(str(ready[k]) for k in ("reason", "message") if ready.get(k))
            return PENDING, f"{name} Running, not Ready" + (f" ({said})" if said else "")
    else:
        why = [
            f"{c.get('reason')}: {c.get('message', '')}"
            for c in status.get("conditions") or []
            if c.get("status") == "False" and c.get("reason")
        ]
        return PENDING, f"{name} {phase}" + (f" ({'; '.join(why)})" if why else "")
    return None


def _transient(
    pod: dict[str, Any], reason: str, message: str, now: datetime | None, grace: float
) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    name = meta.get("name", "?")
    since = not_ready_since(pod)
    elapsed = ((now or datetime.now(timezone.utc)) - since).total_seconds() if since else 0.0
    text = f"{name} {reason}" + (f": {message}" if message else "") + f" (for {elapsed:.0f} s"
    if elapsed < grace:
        return PENDING, f"{text}, transient: failing after {grace:g} s)"
    fix = _TRANSIENT[reason].format(ns=meta.get("namespace", "?"), pod=name)
    return FAILED, f"{text}, past the {grace:g} s grace for transient worker states; {fix})"


def evaluate(
    dataset: dict[str, Any] | None,
    runtime: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    now: datetime | None = None,
    grace: float = TRANSIENT_GRACE,
) -> Readiness:
    """Judge readiness from the Dataset, the VineyardRuntime and the runtime's pods (master and
    workers, :func:`~fluid_airflow.fluid.manifests.runtime_pods_selector`).

    Inputs are API objects as dicts (camelCase, as the API returns them). ``now`` and ``grace``:
    see :func:`pod_problem`.
    """
    if dataset is None:
        return Readiness(FAILED, "", "the Dataset does not exist (create it first, or it was deleted)")
    meta = dataset.get("metadata") or {}
    phase = (dataset.get("status") or {}).get("phase") or ""
    if meta.get("deletionTimestamp"):
        return Readiness(FAILED, phase, f"the Dataset is being deleted (since {meta['deletionTimestamp']})")
    problems = [p for p in (pod_problem(pod, now, grace) for pod in pods) if p]
    not_ready = "; ".join(text for _, text in problems) or "none"
    if runtime is None:
        return Readiness(PENDING, phase, f"Dataset phase {phase or '(none)'}; no VineyardRuntime yet")
    rs = runtime.get("status") or {}
    desired = int((runtime.get("spec") or {}).get("replicas") or 1)
    ready_workers = int(rs.get("workerNumberReady") or 0)
    message = (
        f"Dataset phase {phase or '(none)'} (conditions: {_conditions(dataset)}); VineyardRuntime master "
        f"{rs.get('masterPhase') or '(none)'}, workers {ready_workers}/{desired} ready (workerPhase "
        f"{rs.get('workerPhase') or '(none)'}, conditions: {_conditions(runtime)}); "
        f"pods not ready: {not_ready}"
    )
    if phase == "Failed" or any(kind == FAILED for kind, _ in problems):
        return Readiness(FAILED, phase, message)
    if phase == "Bound" and ready_workers >= desired and rs.get("workerPhase") == "Ready":
        return Readiness(READY, phase, message)
    return Readiness(PENDING, phase, message)
