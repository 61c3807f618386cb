"""Semantic comparison of a Fluid object we want with the one the API server holds.

Fluid v1.0.8 writes Datasets and VineyardRuntimes back through its Go types (``r.Update`` in
``pkg/controllers/v1alpha1/dataset/dataset_controller.go:241,257``; ``e.Client.Update`` in
``pkg/ddc/vineyard/transform_resources.go:146-168``), so what we read back differs from what we wrote:

- quantities are canonicalised: ``Level.Quota`` is a ``*resource.Quantity`` (``api/v1alpha1/common.go:63``),
  ``4096Mi`` reads back ``4Gi``; ``resources`` are ``corev1.ResourceRequirements`` (``common.go:121``);
- empty strings, maps and lists are dropped (``omitempty``, e.g. ``placement``,
  ``api/v1alpha1/dataset_types.go:159``; ``networkMode``, ``api/v1alpha1/vineyardruntime_types.go:109``);
- the worker's memory request is set to the first MEM level's quota + 500Mi when absent, smaller than the
  quota, or within 500Mi above it (``transform_resources.go:86-109,155``).

Fields we do not set are ignored (server and Fluid defaults), so a retried task adopts its own object.
"""

from __future__ import annotations

from typing import Any

from kubernetes.utils import parse_quantity

VINEYARD_OWN_MEMORY = parse_quantity("500Mi")  # transform_resources.go:87
_QUANTITY_PARENTS = ("requests", "limits")


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def _same_quantity(have: Any, want: Any) -> bool:
    try:
        return parse_quantity(have) == parse_quantity(want)
    except (ValueError, TypeError):
        return have == want


def differences(have: Any, want: Any, path: str = "spec", key: str = "", parent: str = "") -> list[str]:
    """Paths (``spec.tieredstore.levels[0].quota``) where ``have`` does not carry ``want``'s value.

    Dicts: only ``want``'s keys count. Lists: same length, element by element. An empty ``want``
    matches an absent ``have``. ``quota`` and the values of ``requests``/``limits`` compare as
    Kubernetes quantities (``kubernetes.utils.parse_quantity``).
    """
    if _empty(want):
        return [] if _empty(have) else [path]
    if isinstance(want, dict):
        have = {} if have is None else have  # a dict of empty values matches an absent one
        if not isinstance(have, dict):
            return [path]
        found: list[str] = []
        for k, v in want.items():
            found += differences(have.get(k), v, f"{path}.{k}", str(k), key)
        return found
    if isinstance(want, list):
        if not isinstance(have, list) or len(have) != len(want):
            return [path]
        found = []
        for i, (h, w) in enumerate(zip(have, want, strict=True)):
            found += differences(h, w, f"{path}[{i}]", key, parent)
        return found
    if key == "quota" or parent in _QUANTITY_PARENTS:
        return [] if _same_quantity(have, want) else [path]
    return [] if have == want else [path]


def fluid_worker_memory(spec: dict[str, Any]) -> str | None:
    """The worker memory request Fluid v1.0.8 writes for a VineyardRuntime ``spec``, or None if it keeps the
    requested one (``transform_resources.go:93-109``: the first MEM level's quota + 500Mi when the request
    is absent or zero, below the quota, or above the quota by less than 500Mi)."""
    levels = (spec.get("tieredstore") or {}).get("levels") or []
    quota = next((lv.get("quota") for lv in levels if lv.get("mediumtype") == "MEM"), None)
    if quota is None:
        return None
    mem = parse_quantity(quota)
    asked = (((spec.get("worker") or {}).get("resources") or {}).get("requests") or {}).get("memory")
    wanted = parse_quantity(asked) if asked else 0
    if wanted == 0 or mem > wanted or (mem < wanted and mem > wanted - VINEYARD_OWN_MEMORY):
        return f"{mem + VINEYARD_OWN_MEMORY}"
    return None


def spec_differences(existing: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Paths where ``existing`` (an object read from the API) differs from the manifest ``wanted``,
    allowing for Fluid's normalisation (module docstring); empty = same spec."""
    found = differences(existing.get("spec") or {}, wanted.get("spec") or {})
    if wanted.get("kind") == "VineyardRuntime":
        path = "spec.worker.resources.requests.memory"
        have = (((existing.get("spec") or {}).get("worker") or {}).get("resources") or {}).get("requests")
        fluid = fluid_worker_memory(wanted.get("spec") or {})
        if path in found and fluid is not None and _same_quantity((have or {}).get("memory"), fluid):
            found.remove(path)
    return found
