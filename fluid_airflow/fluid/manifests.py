"""Pure builders for Fluid Dataset and VineyardRuntime manifests (no API calls).

Schemas: Fluid CRDs ``data.fluid.io/v1alpha1`` (``datasets``, ``vineyardruntimes``), kept in
``tests/crds/``; every manifest built here is validated against them in tests. Behaviour
relied on (shared notes fluid.md): a VineyardRuntime binds to the Dataset of the same name and
namespace (section 2.2); the first MEM tiered-store level's ``quota`` becomes vineyardd's
``--size`` (2.2); Fluid labels cache nodes ``fluid.io/s-<namespace>-<dataset>`` and related
keys, falling back to the Dataset's UID past 63 characters (5.1).

All input is checked here, so a bad name or quantity fails the task before any request.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from fluid_airflow import exceptions as errors

GROUP = "data.fluid.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DATASET_PLURAL = "datasets"
RUNTIME_PLURAL = "vineyardruntimes"
MEDIUMS = ("MEM", "SSD", "HDD")
NETWORK_MODES = ("HostNetwork", "ContainerNetwork", "")
PLACEMENTS = ("Exclusive", "Shared", "")
ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadOnlyOnce", "ReadWriteOncePod")
# The longest label Fluid derives from namespace + Dataset name (capacity label, fluid.md 5.1).
LONGEST_DERIVED_PREFIX = "s-h-vineyard-m-"
LABEL_NAME_MAX = 63

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def validate_names(name: str, namespace: str) -> None:
    """Check a Dataset name (DNS-1035 label) and namespace (DNS-1123 label).

    Also requires every node-label key Fluid derives from them (``fluid.io/s-<ns>-<name>``,
    ``fluid.io/f-…``, ``fluid.io/s-h-vineyard-m-…``) to fit the 63-character label-name limit,
    so data affinity can use the documented key (Fluid switches to a UID-based key, and some
    components fail, past it: fluid issues #6089, #5362).

    :raises FluidSpecError: naming the value, the rule and the fix.
    """
    if not isinstance(name, str) or len(name) > LABEL_NAME_MAX or not _DNS1035.match(name):
        raise errors.FluidSpecError(
            f"Dataset name {name!r} is not a DNS-1035 label (lower-case letters, digits and '-', starting "
            "with a letter, ending with a letter or digit, at most 63 characters): Fluid would ignore "
            "the Dataset. Choose a name like 'flights-cache'."
        )
    if not isinstance(namespace, str) or len(namespace) > LABEL_NAME_MAX or not _DNS1123.match(namespace):
        raise errors.FluidSpecError(
            f"namespace {namespace!r} is not a DNS-1123 label (lower-case letters, digits and '-', at most "
            "63 characters)."
        )
    derived = f"{LONGEST_DERIVED_PREFIX}{namespace}-{name}"
    if len(derived) > LABEL_NAME_MAX:
        raise errors.FluidSpecError(
            f"Dataset {namespace}/{name}: Fluid derives the node label 'fluid.io/{derived}' "
            f"({len(derived)} characters after 'fluid.io/'; the limit is {LABEL_NAME_MAX}). Shorten the "
            f"Dataset name or namespace by {len(derived) - LABEL_NAME_MAX} characters."
        )


def cache_node_label_key(namespace: str, name: str) -> str:
    """The label Fluid puts on cache nodes of a Dataset: ``fluid.io/s-<namespace>-<name>``.

    Valid for names accepted by :func:`validate_names`. Prefer reading the key from the PVC's
    labels when the PVC exists (fluid.md 5.1).
    """
    return f"fluid.io/s-{namespace}-{name}"


def parse_quantity(value: str | int, what: str) -> int:
    """Bytes of a Kubernetes quantity (``30Gi``, ``512Mi``, ``1G``), via the kubernetes client.

    :raises FluidSpecError: not a quantity, or not positive.
    """
    from kubernetes.utils.quantity import parse_quantity as k8s_parse

    try:
        number = k8s_parse(value)
    except (ValueError, TypeError) as exc:
        raise errors.FluidSpecError(
            f"{what} {value!r} is not a Kubernetes quantity ({exc}); write e.g. '30Gi' or '512Mi'."
        ) from None
    if number <= 0:
        raise errors.FluidSpecError(f"{what} {value!r} must be positive.")
    return int(number)


def _metadata(name: str, namespace: str, labels: dict | None, annotations: dict | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = {str(k): str(v) for k, v in labels.items()}
    if annotations:
        meta["annotations"] = {str(k): str(v) for k, v in annotations.items()}
    return meta


def _resource(kind: str, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def build_dataset(
    name: str,
    namespace: str,
    *,
    access_modes: list[str] | tuple[str, ...] = ("ReadWriteMany",),
    placement: str | None = None,
    node_affinity: dict[str, Any] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Dataset for a VineyardRuntime (no ``mounts``: Vineyard caches what tasks put).

    :param access_modes: copied to Fluid's PV/PVC; ``ReadWriteMany`` lets task pods write.
    :param placement: ``Exclusive`` (Fluid's default, also ``""``) or ``Shared``.
    :param node_affinity: ``{"required": <V1NodeSelector dict>}``: where cache workers may run.
    :param tolerations: V1Toleration dicts for the cache workers.
    :raises FluidSpecError: invalid names, access modes or placement.
    """
    validate_names(name, namespace)
    bad = [m for m in access_modes if m not in ACCESS_MODES]
    if bad or not access_modes:
        raise errors.FluidSpecError(
            f"Dataset {namespace}/{name}: access modes {list(access_modes)!r}; use {ACCESS_MODES}"
        )
    spec: dict[str, Any] = {"accessModes": list(access_modes)}
    if placement is not None:
        if placement not in PLACEMENTS:
            raise errors.FluidSpecError(
                f"Dataset {namespace}/{name}: placement {placement!r}; use one of {PLACEMENTS}"
            )
        spec["placement"] = placement
    if node_affinity:
        spec["nodeAffinity"] = copy.deepcopy(node_affinity)
    if tolerations:
        spec["tolerations"] = copy.deepcopy(tolerations)
    return _resource("Dataset", _metadata(name, namespace, labels, annotations), spec)


def build_vineyard_runtime(
    name: str,
    namespace: str,
    *,
    replicas: int = 1,
    cache_capacity: str = "4Gi",
    cache_medium: str = "MEM",
    tier_path: str | None = None,
    volume_type: str = "emptyDir",
    master: dict[str, Any] | None = None,
    worker: dict[str, Any] | None = None,
    fuse: dict[str, Any] | None = None,
    network_mode: str | None = None,
    pod_metadata: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A VineyardRuntime for the Dataset ``namespace/name`` (same name binds them).

    :param replicas: vineyardd workers (cache nodes), >= 1.
    :param cache_capacity: quantity per worker. For ``MEM`` it is vineyardd's shared memory
        (``--size``); Fluid requests ``capacity + 500Mi`` of memory per worker pod (fluid.md 3).
    :param cache_medium: ``MEM``, ``SSD`` or ``HDD`` (tiered-store level ``mediumtype``). SSD/HDD
        need ``tier_path`` (without it Fluid silently falls back to 4Gi of memory, fluid.md 2.2).
    :param master: ``spec.master`` fields (etcd: ``replicas``, ``image``, ``resources``, ...).
    :param worker: ``spec.worker`` fields (vineyardd: ``options``, ``resources``, ...).
    :param fuse: ``spec.fuse`` fields (``cleanPolicy``, ``options``, ...).
    :param network_mode: applied to master, worker and fuse: ``HostNetwork`` (Fluid's default,
        also ``""``) or ``ContainerNetwork`` (fixed ports).
    :param pod_metadata: ``{"labels": {...}, "annotations": {...}}`` for every runtime pod.
    :raises FluidSpecError: invalid names, replicas, quantity, medium or network mode.
    """
    validate_names(name, namespace)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise errors.FluidSpecError(
            f"VineyardRuntime {namespace}/{name}: replicas {replicas!r} must be an integer >= 1"
        )
    parse_quantity(cache_capacity, f"VineyardRuntime {namespace}/{name} cache capacity")
    if cache_medium not in MEDIUMS:
        raise errors.FluidSpecError(
            f"VineyardRuntime {namespace}/{name}: cache medium {cache_medium!r}; use one of {MEDIUMS}"
        )
    if cache_medium != "MEM" and not tier_path:
        raise errors.FluidSpecError(
            f"VineyardRuntime {namespace}/{name}: cache medium {cache_medium} needs tier_path (a node "
            "directory to spill to); without it Fluid ignores the level and gives vineyardd 4Gi of memory."
        )
    if volume_type not in ("emptyDir", "hostPath"):
        raise errors.FluidSpecError(f"VineyardRuntime {namespace}/{name}: volume type {volume_type!r}")
    level: dict[str, Any] = {
        "mediumtype": cache_medium,
        "quota": str(cache_capacity),
        "volumeType": volume_type,
    }
    if tier_path:
        level["path"] = tier_path
    spec: dict[str, Any] = {"replicas": replicas, "tieredstore": {"levels": [level]}}
    for field, value in (("master", master), ("worker", worker), ("fuse", fuse)):
        if value:
            spec[field] = copy.deepcopy(value)
    if network_mode is not None:
        if network_mode not in NETWORK_MODES:
            raise errors.FluidSpecError(
                f"VineyardRuntime {namespace}/{name}: network mode {network_mode!r}; "
                f"use one of {NETWORK_MODES}"
            )
        for field in ("master", "worker", "fuse"):
            spec.setdefault(field, {})["networkMode"] = network_mode
    if pod_metadata:
        spec["podMetadata"] = copy.deepcopy(pod_metadata)
    return _resource("VineyardRuntime", _metadata(name, namespace, labels, annotations), spec)


def same_spec(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """True when every field ``wanted`` sets has the same value in ``existing``'s spec.

    Fields the API server or Fluid default in (absent from ``wanted``) are ignored, so a
    re-run adopts its own earlier object.
    """

    def covers(have: Any, want: Any) -> bool:
        if isinstance(want, dict):
            return isinstance(have, dict) and all(covers(have.get(k), v) for k, v in want.items())
        if isinstance(want, list):
            return isinstance(have, list) and len(have) == len(want) and all(map(covers, have, want))
        return have == want

    return covers(existing.get("spec", {}), wanted.get("spec", {}))
