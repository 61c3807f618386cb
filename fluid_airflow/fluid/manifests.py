"""Pure builders for Fluid Dataset and VineyardRuntime manifests (no API calls).

Schemas: Fluid CRDs ``data.fluid.io/v1alpha1`` (``datasets``, ``vineyardruntimes``), kept in
``tests/crds/``; every manifest built here is validated against them in tests. Behaviour
relied on (docs/design.md): a VineyardRuntime binds to the Dataset of the same name and
namespace (§17); the first MEM tiered-store level's ``quota`` becomes vineyardd's
``--size`` (§17); Fluid labels cache nodes ``fluid.io/s-<namespace>-<dataset>`` and related
keys, falling back to the Dataset's UID past 63 characters (§19).

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
MEDIUMS = ("MEM",)  # what Fluid v1.0.8 deploys for Vineyard: check_tiered_store
NETWORK_MODES = ("HostNetwork", "ContainerNetwork", "")
PLACEMENTS = ("Exclusive", "Shared", "")
ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadOnlyOnce", "ReadWriteOncePod")
LABEL_NAME_MAX = 63
# Where a task pod mounts a VineyardRuntime's Dataset PVC: Fluid's fuse writes vineyard-config.yaml
# (and, on worker nodes, vineyard-worker.sock) there (docs/design.md §17, §18).
VINEYARD_MOUNT_PATH = "/var/run/vineyard"
# Fluid v1.0.8 pkg/utils/label.go GetNamespacedNameValueWithPrefix (lines 186-206): a key
# ``<prefix><ns>-<name>`` is used only while the whole key, ``fluid.io/`` included, is shorter than
# validation.DNS1035LabelMaxLength (63); from 63 characters on Fluid keys it by the Dataset's UID.
UID_KEY_FROM = 63
# v6d's release images (v6d v0.24.2 .github/workflows/build-vineyardd-and-wheels-linux.yaml and
# docker/Makefile: multi-arch manifests ``vineyardd:alpine-<tag>`` and ``vineyard-fluid-fuse:<tag>``).
VINEYARDD_IMAGE = "ghcr.io/v6d-io/v6d/vineyardd"
FUSE_IMAGE = "ghcr.io/v6d-io/v6d/vineyard-fluid-fuse"
# Fluid v1.0.8 never renders these: pkg/ddc/vineyard/transform.go transformWorkers does not call
# transformWorkerOptions, so the chart's defaults (charts/vineyard/values.yaml worker.options:
# reserve memory, etcd prefix /vineyard, etcd wait 120 s) always apply; no template of
# charts/vineyard/templates/master reads .Values.master.options.
IGNORED_OPTIONS = ("master", "worker")

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def validate_names(name: str, namespace: str) -> None:
    """Check a Dataset name (DNS-1035 label) and namespace (DNS-1123 label).

    Also requires Fluid's cache-node label key ``fluid.io/s-<ns>-<name>`` (the one on the PVC,
    used for data affinity) to be shorter than 63 characters: from 63 on, Fluid v1.0.8 keys it
    by the Dataset's UID instead (``pkg/utils/label.go`` ``GetNamespacedNameValueWithPrefix``),
    and the documented key would match no node.

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
    key = cache_node_label_key(namespace, name)
    if len(key) >= UID_KEY_FROM:
        raise errors.FluidSpecError(
            f"Dataset {namespace}/{name}: Fluid names the cache-node label after namespace and name only "
            f"while the key is shorter than {UID_KEY_FROM} characters; '{key}' has {len(key)}, so Fluid "
            "would key it by the Dataset's UID and the documented key would match no node. Shorten the "
            f"Dataset name or namespace by {len(key) - UID_KEY_FROM + 1} characters."
        )


def cache_node_label_key(namespace: str, name: str) -> str:
    """The label Fluid puts on cache nodes of a Dataset: ``fluid.io/s-<namespace>-<name>``.

    Valid for names accepted by :func:`validate_names`. Prefer reading the key from the PVC's
    labels when the PVC exists (docs/design.md §19).
    """
    return f"fluid.io/s-{namespace}-{name}"


def vineyard_images(version: str | None = None) -> dict[str, dict[str, str]]:
    """``spec.worker`` and ``spec.fuse`` image fields matching the installed vineyard client.

    Fluid v1.0.8 defaults to v0.22.2 images (``pkg/common/vineyard.go``) while we ship the
    0.24.2 client; an explicit ``image`` + ``imageTag`` wins over that default
    (``pkg/ddc/vineyard/utils.go`` ``parseWorkerImage``, ``parseFuseImage``).

    :param version: vineyard version, default: the installed ``vineyard`` package's.
    """
    if version is None:
        from importlib.metadata import version as installed

        version = installed("vineyard")
    return {
        "worker": {"image": VINEYARDD_IMAGE, "imageTag": f"alpine-v{version}"},
        "fuse": {"image": FUSE_IMAGE, "imageTag": f"v{version}"},
    }


def _with_images(spec: dict[str, Any]) -> None:
    """Set the client's images on worker and fuse unless the caller chose an image there."""
    for field, image in vineyard_images().items():
        part = spec.setdefault(field, {})
        if not part.get("image") and not part.get("imageTag"):
            part.update(image)


def check_options(where: str, parts: dict[str, Any]) -> None:
    """Refuse ``master.options`` and ``worker.options``: Fluid v1.0.8 ignores them (see
    :data:`IGNORED_OPTIONS`), so e.g. ``vineyardd.reserve.memory: "false"`` would silently leave
    vineyardd reserving its memory.

    :raises FluidSpecError: naming the field and the fix.
    """
    for field in IGNORED_OPTIONS:
        options = (parts.get(field) or {}).get("options")
        if options:
            raise errors.FluidSpecError(
                f"{where}: {field}.options {options!r} would have no effect: Fluid v1.0.8 never passes "
                f"{field} options of a VineyardRuntime to its pods. Remove {field}.options (fuse.options "
                "do reach the fuse)."
            )


def check_worker_memory(where: str, worker: dict[str, Any] | None) -> None:
    """Refuse a memory request or limit in ``worker.resources``: it rarely reaches the pod.

    Fluid v1.0.8 replaces a worker memory request below quota + 500Mi by that sum
    (``pkg/ddc/vineyard/transform_resources.go`` ``transformResourcesForWorker``), and its chart
    renders a memory request or limit only when its *text* sorts before the quota's
    (``charts/vineyard/templates/_helpers.tpl`` ``vineyard.worker.resources``: ``lt`` on
    strings), so ``6Gi`` with a ``4Gi`` quota, or Fluid's own ``31220Mi`` for ``30Gi``, is
    dropped. Memory is sized by ``cache_capacity`` instead.

    :raises FluidSpecError: naming the field and the fix.
    """
    resources = (worker or {}).get("resources") or {}
    for kind in ("requests", "limits"):
        memory = (resources.get(kind) or {}).get("memory")
        if memory:
            raise errors.FluidSpecError(
                f"{where}: worker.resources.{kind}.memory {memory!r} would not reliably reach the worker "
                "pod: Fluid v1.0.8 sizes it from the quota (+500Mi) and its chart drops a memory value "
                "whose text sorts after the quota's (a string comparison). Remove it and size vineyardd "
                "with cache_capacity."
            )


def worker_selector(name: str) -> str:
    """Label selector of the vineyardd worker pods of VineyardRuntime ``name`` (Fluid v1.0.8
    ``charts/vineyard/templates/worker/statefulset.yaml``: labels ``app``, ``role``, ``release``)."""
    return f"app=vineyard,role=vineyard-worker,release={name}"


#: Key of :func:`rpc_conf_name`'s data: the runtime's worker RPC endpoints, comma-separated, in worker order.
RPC_CONF_KEY = "VINEYARD_RPC_ENDPOINT"


def rpc_conf_name(name: str) -> str:
    """ConfigMap in which Fluid publishes VineyardRuntime ``name``'s worker RPC endpoints:
    ``<name>-rpc-conf``, key :data:`RPC_CONF_KEY` =
    ``<name>-worker-<i>.<name>-worker.<namespace>:<rpc port>`` for every replica ``i`` (Fluid v1.0.8
    ``charts/vineyard/templates/config/vineyard-rpc-conf.yaml``; the chart's fullname is the runtime's
    name: ``pkg/ddc/vineyard/transform.go`` sets ``fullnameOverride``)."""
    return f"{name}-rpc-conf"


def runtime_pods_selector(name: str) -> str:
    """Label selector of the master (etcd) and worker pods of VineyardRuntime ``name`` (Fluid v1.0.8
    ``charts/vineyard/templates/{master,worker}/statefulset.yaml``: ``role`` is ``vineyard-master`` or
    ``vineyard-worker``)."""
    return f"app=vineyard,role in (vineyard-master,vineyard-worker),release={name}"


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


def check_tiered_store(where: str, cache_medium: str, tier_path: str | None) -> None:
    """Refuse tiered stores Fluid v1.0.8 does not deploy for a VineyardRuntime, before any request.

    - A MEM level is required: ``transformResourcesForWorker`` fails with "the tierdStore's memory
      size is not found" without one (fluid v1.0.8 ``pkg/ddc/vineyard/transform_resources.go:92-126``),
      so an SSD or HDD level alone never comes up and the bind would wait until its timeout.
    - A MEM level's ``path`` is dropped (only ``mediumtype`` and ``quota`` reach the chart,
      ``pkg/ddc/vineyard/transform.go:285-289``), so ``tier_path`` would have no effect.

    :raises FluidSpecError: naming the field and the fix.
    """
    if cache_medium != "MEM":
        raise errors.FluidSpecError(
            f"{where}: cache_medium {cache_medium!r} is not deployable: Fluid's Vineyard runtime requires a "
            "MEM tiered-store level (its worker transform fails with \"the tierdStore's memory size is not "
            "found\" and the bind would wait until its timeout). Set cache_medium='MEM' (vineyardd's shared "
            "memory, sized by cache_capacity)."
        )
    if tier_path:
        raise errors.FluidSpecError(
            f"{where}: tier_path {tier_path!r} has no effect: Fluid passes only the quota of a MEM level to "
            "vineyardd, never its path. Remove tier_path."
        )


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
        (``--size``). Fluid writes ``capacity + 500Mi`` into the runtime as the worker's memory
        request, but its chart renders that request only for some capacities (e.g. ``4Gi``, not
        ``30Gi``; see :func:`check_worker_memory`), so the scheduler may not reserve it.
    :param cache_medium: must be ``MEM``: the one shape Fluid v1.0.8 deploys for Vineyard here
        (see :func:`check_tiered_store`).
    :param tier_path: must be None (Fluid ignores a MEM level's path).
    :param master: ``spec.master`` fields (etcd: ``replicas``, ``image``, ``resources``, ...;
        no ``options``, see :func:`check_options`).
    :param worker: ``spec.worker`` fields (vineyardd: ``image``, ``resources`` but no memory,
        ``nodeSelector``, ...; no ``options``). Without ``image``/``imageTag`` here or in
        ``fuse``, the images of :func:`vineyard_images` are set.
    :param fuse: ``spec.fuse`` fields (``cleanPolicy``, ``options``, ...).
    :param network_mode: applied to master, worker and fuse: ``HostNetwork`` (Fluid's default,
        also ``""``) or ``ContainerNetwork`` (fixed ports).
    :param pod_metadata: ``{"labels": {...}, "annotations": {...}}`` for every runtime pod.
    :raises FluidSpecError: invalid names, replicas, quantity, medium or network mode; master or
        worker options; a worker memory request or limit (:func:`check_worker_memory`).
    """
    validate_names(name, namespace)
    where = f"VineyardRuntime {namespace}/{name}"
    _check_runtime(where, replicas, cache_capacity, cache_medium, tier_path, volume_type, master, worker)
    level: dict[str, Any] = {
        "mediumtype": cache_medium,
        "quota": str(cache_capacity),
        "volumeType": volume_type,
    }
    spec: dict[str, Any] = {"replicas": replicas, "tieredstore": {"levels": [level]}}
    for field, value in (("master", master), ("worker", worker), ("fuse", fuse)):
        if value:
            spec[field] = copy.deepcopy(value)
    _set_network_mode(where, spec, network_mode)
    _with_images(spec)
    if pod_metadata:
        spec["podMetadata"] = copy.deepcopy(pod_metadata)
    return _resource("VineyardRuntime", _metadata(name, namespace, labels, annotations), spec)


def _check_runtime(
    where: str,
    replicas: int,
    cache_capacity: str,
    cache_medium: str,
    tier_path: str | None,
    volume_type: str,
    master: dict[str, Any] | None,
    worker: dict[str, Any] | None,
) -> None:
    """The input checks of :func:`build_vineyard_runtime` that need no spec, in the order it documents."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise errors.FluidSpecError(f"{where}: replicas {replicas!r} must be an integer >= 1")
    parse_quantity(cache_capacity, f"{where} cache capacity")
    check_tiered_store(where, cache_medium, tier_path)
    check_options(where, {"master": master, "worker": worker})
    check_worker_memory(where, worker)
    if volume_type not in ("emptyDir", "hostPath"):
        raise errors.FluidSpecError(f"{where}: volume type {volume_type!r}")


def _set_network_mode(where: str, spec: dict[str, Any], network_mode: str | None) -> None:
    """Apply ``network_mode`` to master, worker and fuse (Fluid reads it per component)."""
    if network_mode is None:
        return
    if network_mode not in NETWORK_MODES:
        raise errors.FluidSpecError(f"{where}: network mode {network_mode!r}; use one of {NETWORK_MODES}")
    for field in ("master", "worker", "fuse"):
        spec.setdefault(field, {})["networkMode"] = network_mode


def same_spec(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """True when ``existing`` carries every field ``wanted`` sets, compared as Fluid stores them:
    quantities by value, empty values as absent, Fluid's worker memory request allowed
    (:func:`fluid_airflow.fluid.compare.spec_differences` names the differing paths).

    Fields the API server or Fluid default in (absent from ``wanted``) are ignored, so a
    re-run adopts its own earlier object.
    """
    from fluid_airflow.fluid.compare import spec_differences

    return not spec_differences(existing, wanted)
