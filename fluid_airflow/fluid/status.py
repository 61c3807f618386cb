"""Readiness of a Dataset and its VineyardRuntime, from their status (pure functions).

Fluid marks a Dataset ``Bound`` once the runtime's master and at least one worker are ready
(fluid.md 2.1), and its Vineyard readiness check is a stub upstream, so ``Bound`` alone does not
mean the cache is usable. Ready here means: Dataset ``Bound`` **and** the VineyardRuntime's
``workerNumberReady`` reaches ``spec.replicas`` with ``workerPhase: Ready``. Failed means:
Dataset ``Failed``, the Dataset being deleted, or a worker pod that cannot start
(``CrashLoopBackOff``, image pull errors) or has failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

READY, PENDING, FAILED = "ready", "pending", "failed"
# Container waiting reasons that do not resolve by waiting.
_HOPELESS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}


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


def pod_problem(pod: dict[str, Any]) -> tuple[str, str] | None:
    """``(kind, text)`` for a worker pod that is not running: kind ``failed`` or ``pending``."""
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    if phase == "Failed":
        return FAILED, f"{name} Failed ({status.get('reason') or status.get('message') or 'no reason'})"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _HOPELESS:
            return FAILED, f"{name} {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    if phase != "Running":
        why = [
            f"{c.get('reason')}: {c.get('message', '')}"
            for c in status.get("conditions") or []
            if c.get("status") == "False" and c.get("reason")
        ]
        return PENDING, f"{name} {phase}" + (f" ({'; '.join(why)})" if why else "")
    return None


def evaluate(
    dataset: dict[str, Any] | None, runtime: dict[str, Any] | None, worker_pods: list[dict[str, Any]]
) -> Readiness:
    """Judge readiness from the Dataset, the VineyardRuntime and the runtime's worker pods.

    Inputs are API objects as dicts (camelCase, as the API returns them).
    """
    if dataset is None:
        return Readiness(FAILED, "", "the Dataset does not exist (create it first, or it was deleted)")
    meta = dataset.get("metadata") or {}
    phase = (dataset.get("status") or {}).get("phase") or ""
    if meta.get("deletionTimestamp"):
        return Readiness(FAILED, phase, f"the Dataset is being deleted (since {meta['deletionTimestamp']})")
    problems = [p for p in map(pod_problem, worker_pods) if p]
    pods = "; ".join(text for _, text in problems) or "none"
    if runtime is None:
        return Readiness(PENDING, phase, f"Dataset phase {phase or '(none)'}; no VineyardRuntime yet")
    rs = runtime.get("status") or {}
    desired = int((runtime.get("spec") or {}).get("replicas") or 1)
    ready_workers = int(rs.get("workerNumberReady") or 0)
    message = (
        f"Dataset phase {phase or '(none)'} (conditions: {_conditions(dataset)}); VineyardRuntime master "
        f"{rs.get('masterPhase') or '(none)'}, workers {ready_workers}/{desired} ready (workerPhase "
        f"{rs.get('workerPhase') or '(none)'}, conditions: {_conditions(runtime)}); pods not running: {pods}"
    )
    if phase == "Failed" or any(kind == FAILED for kind, _ in problems):
        return Readiness(FAILED, phase, message)
    if phase == "Bound" and ready_workers >= desired and rs.get("workerPhase") == "Ready":
        return Readiness(READY, phase, message)
    return Readiness(PENDING, phase, message)
