"""Pure builders for task pods that use a Fluid Dataset backed by a VineyardRuntime (no API calls).

Every function takes a ``kubernetes.client.models.V1Pod`` (as ``KubernetesPodOperator`` builds it)
and returns a changed **deep copy**; the input is never modified. Behaviour relied on
(docs/design.md): a VineyardRuntime reaches pods through a PVC named exactly like the Dataset,
mounted at ``/var/run/vineyard`` (§17, §18), where Fluid's fuse writes
``vineyard-config.yaml`` and, on nodes running a worker, ``vineyard-worker.sock`` (§18); cache
nodes carry ``fluid.io/s-<ns>-<dataset>=true``, or ``fluid.io/s-<dataset UID>`` once that key
reaches 63 characters, and the PVC carries the same label (§19).

Input is checked before anything is built: invalid input raises
:class:`~fluid_airflow.exceptions.FluidSpecError` (a ``ValueError``) naming the fix.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes.client import models as k8s

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid import manifests
from fluid_airflow.vineyard.data import inline, tree
from fluid_airflow.vineyard.data.reference import VineyardReference

AFFINITY_MODES = ("required", "preferred", "none")
DATA_AFFINITY_WEIGHT = 100  # as Fluid's webhook plugin NodeAffinityWithCache (docs/design.md §19)
NODE_NAME_FIELD = "metadata.name"  # the node field a node selector term may match
CACHE_LABEL_PREFIX = "fluid.io/s-"
CAPACITY_LABEL_PREFIX = "fluid.io/s-h-"
UID_KEY_LENGTH = 63  # a documented key this long or longer is replaced by the UID key (docs/design.md §19)
DATASET_LABEL = "fluid-airflow/dataset"  # our label on task pods, value: the Dataset name
VOLUME_PREFIX = "fluid-dataset-"
CONFIG_ENV = "VINEYARD_CONFIG"
CONFIG_FILE = "vineyard-config.yaml"

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")  # also a label value's form


def _copy(pod: Any, what: str) -> k8s.V1Pod:
    if not isinstance(pod, k8s.V1Pod):
        raise TypeError(f"{what}: expected a kubernetes.client V1Pod, got {type(pod).__name__}")
    pod = copy.deepcopy(pod)
    pod.spec = pod.spec or k8s.V1PodSpec(containers=[])
    pod.metadata = pod.metadata or k8s.V1ObjectMeta()
    return pod


def validate_dataset_name(name: Any) -> None:
    """Check a Dataset name: a DNS-1035 label (Fluid's rule), which also makes a valid PVC name.

    Unlike :func:`~fluid_airflow.fluid.manifests.validate_names` this does not require Fluid's
    derived label keys to stay short: a task pod reads the actual key from the PVC.

    :raises FluidSpecError: not a str of lower-case letters, digits and ``-``, starting with a
        letter, at most 63 characters.
    """
    if not isinstance(name, str) or len(name) > manifests.LABEL_NAME_MAX or not _DNS1035.match(name):
        raise errors.FluidSpecError(
            f"Dataset name {name!r} is not a DNS-1035 label (lower-case letters, digits and '-', starting "
            "with a letter, ending with a letter or digit, at most 63 characters)."
        )


def validate_namespace(namespace: Any) -> None:
    """Check a namespace: a DNS-1123 label (at most 63 characters).

    :raises FluidSpecError: naming the rule.
    """
    valid = isinstance(namespace, str) and len(namespace) <= manifests.LABEL_NAME_MAX
    if not valid or not _DNS1123_LABEL.match(namespace):
        raise errors.FluidSpecError(
            f"namespace {namespace!r} is not a DNS-1123 label (lower-case letters, digits and '-', at most "
            "63 characters)."
        )


def validate_label_key(key: Any) -> None:
    """Check a label key ``[prefix/]name`` (prefix: DNS-1123 subdomain <= 253, name <= 63).

    :raises FluidSpecError: naming the rule.
    """
    prefix, _, name = key.rpartition("/") if isinstance(key, str) else ("", "", "")
    if (
        not name
        or len(name) > manifests.LABEL_NAME_MAX
        or not _LABEL_NAME.match(name)
        or (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)))
        or (isinstance(key, str) and key.startswith("/"))
    ):
        raise errors.FluidSpecError(
            f"label key {key!r} is not a Kubernetes label key ([DNS-subdomain prefix/]name, the name at "
            "most 63 characters of letters, digits, '-', '_', '.', starting and ending alphanumeric)."
        )


def volume_name(dataset_name: str) -> str:
    """``fluid-dataset-<dataset>``; past 63 characters the name is cut and a hash added (DNS-1123 label)."""
    name = f"{VOLUME_PREFIX}{dataset_name}"
    if len(name) <= manifests.LABEL_NAME_MAX:
        return name
    digest = hashlib.sha1(dataset_name.encode()).hexdigest()[:8]
    keep = manifests.LABEL_NAME_MAX - len(VOLUME_PREFIX) - len(digest) - 1
    return f"{VOLUME_PREFIX}{dataset_name[:keep].rstrip('-')}-{digest}"


def mount_dataset(
    pod: k8s.V1Pod,
    dataset_name: str,
    *,
    container_name: str = "base",
    mount_path: str = manifests.VINEYARD_MOUNT_PATH,
) -> k8s.V1Pod:
    """Mount the Dataset's PVC (named like the Dataset) into one container of ``pod``.

    Adds volume :func:`volume_name` with ``persistentVolumeClaim.claimName = dataset_name`` (or
    reuses a volume of the pod that already names that claim), a volumeMount at ``mount_path``
    in container ``container_name``, and env ``VINEYARD_CONFIG=<mount_path>/vineyard-config.yaml``,
    the file Fluid's fuse writes there (docs/design.md §18; it makes vineyard clients use the worker
    socket when present and RPC otherwise). An existing ``VINEYARD_CONFIG`` of the container is
    left as set. Applying it twice gives the same pod.

    :param mount_path: absolute path in the container; ``/var/run/vineyard`` by default (5.3).
    :returns: a deep copy of ``pod``.
    :raises FluidSpecError: invalid Dataset name or mount path; no container ``container_name``;
        ``mount_path`` already mounts another volume in it; a volume with the generated name
        already exists with another source.
    """
    validate_dataset_name(dataset_name)
    if not isinstance(mount_path, str) or not mount_path.startswith("/") or ":" in mount_path:
        raise errors.FluidSpecError(f"mount path {mount_path!r} must be an absolute path without ':'")
    mount_path = mount_path.rstrip("/") or "/"
    pod = _copy(pod, "mount_dataset")
    container = next((c for c in pod.spec.containers or [] if c.name == container_name), None)
    if container is None:
        names = [c.name for c in pod.spec.containers or []]
        raise errors.FluidSpecError(
            f"pod {pod.metadata.name!r} has no container {container_name!r} to mount Dataset "
            f"{dataset_name!r} into (containers: {names}); pass the name of one of them."
        )
    name = _claim_volume(pod, dataset_name)
    mounts = container.volume_mounts = list(container.volume_mounts or [])
    taken = next((m for m in mounts if (m.mount_path.rstrip("/") or "/") == mount_path), None)
    if taken is not None and taken.name != name:
        raise errors.FluidSpecError(
            f"container {container_name!r} already mounts volume {taken.name!r} at {mount_path}; "
            f"Dataset {dataset_name!r} needs that path. Remove that mount or choose another mount path."
        )
    if taken is None:
        mounts.append(k8s.V1VolumeMount(name=name, mount_path=mount_path))
    env = container.env = list(container.env or [])
    if not any(e.name == CONFIG_ENV for e in env):
        env.append(k8s.V1EnvVar(name=CONFIG_ENV, value=f"{mount_path.rstrip('/')}/{CONFIG_FILE}"))
    return pod


def _claim_volume(pod: k8s.V1Pod, dataset_name: str) -> str:
    """The name of ``pod``'s volume of PVC ``dataset_name``: an existing one, else one added."""
    volumes = pod.spec.volumes = list(pod.spec.volumes or [])
    claims = (v for v in volumes if v.persistent_volume_claim)
    same_claim = next((v for v in claims if v.persistent_volume_claim.claim_name == dataset_name), None)
    if same_claim is not None:
        return same_claim.name
    name = volume_name(dataset_name)
    if any(v.name == name for v in volumes):
        raise errors.FluidSpecError(
            f"pod {pod.metadata.name!r} already has a volume named {name!r} that is not PVC "
            f"{dataset_name!r}; rename that volume."
        )
    claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=dataset_name)
    volumes.append(k8s.V1Volume(name=name, persistent_volume_claim=claim))
    return name


def _requirement(key: str, values: list[str]) -> k8s.V1NodeSelectorRequirement:
    return k8s.V1NodeSelectorRequirement(key=key, operator="In", values=values)


def _node_affinity(pod: k8s.V1Pod) -> k8s.V1NodeAffinity:
    pod.spec.affinity = pod.spec.affinity or k8s.V1Affinity()
    pod.spec.affinity.node_affinity = pod.spec.affinity.node_affinity or k8s.V1NodeAffinity()
    return pod.spec.affinity.node_affinity


def _prefer(node: k8s.V1NodeAffinity, weight: int, requirement: k8s.V1NodeSelectorRequirement) -> None:
    _prefer_term(node, weight, k8s.V1NodeSelectorTerm(match_expressions=[requirement]))


def _prefer_term(node: k8s.V1NodeAffinity, weight: int, selector: k8s.V1NodeSelectorTerm) -> None:
    term = k8s.V1PreferredSchedulingTerm(weight=weight, preference=selector)
    terms = node.preferred_during_scheduling_ignored_during_execution = list(
        node.preferred_during_scheduling_ignored_during_execution or []
    )
    if term not in terms:
        terms.append(term)


def data_affinity(pod: k8s.V1Pod, label_key: str, mode: str = "preferred") -> k8s.V1Pod:
    """Steer ``pod`` to the Dataset's cache nodes: node affinity ``label_key In ["true"]`` (5.3).

    Merged with the affinity the pod already has, never replacing it:

    - ``required``: the expression is ANDed into every existing
      ``requiredDuringScheduling…nodeSelectorTerms`` entry (terms are ORed, so each must carry
      it, as Fluid's webhook merges), or becomes the only term when there is none. Guarantees the
      worker socket, but only ``replicas`` nodes qualify and the pod may stay Pending (5.3).
    - ``preferred`` (default): a preferred term of weight 100 is appended; off the cache nodes the
      pod still reaches vineyardd over RPC.
    - ``none``: the pod is returned unchanged (as a copy).

    :param label_key: the cache-node label, best from :func:`cache_label_key`.
    :returns: a deep copy of ``pod``.
    :raises FluidSpecError: unknown ``mode`` or invalid ``label_key``.
    """
    if mode not in AFFINITY_MODES:
        raise errors.FluidSpecError(f"data affinity {mode!r}: use one of {AFFINITY_MODES}")
    validate_label_key(label_key)
    pod = _copy(pod, "data_affinity")
    if mode == "none":
        return pod
    requirement = _requirement(label_key, ["true"])
    node = _node_affinity(pod)
    if mode == "preferred":
        _prefer(node, DATA_AFFINITY_WEIGHT, requirement)
        return pod
    required = node.required_during_scheduling_ignored_during_execution
    terms = list(required.node_selector_terms or []) if required else []
    if not terms:
        terms = [k8s.V1NodeSelectorTerm(match_expressions=[])]
    for term in terms:
        term.match_expressions = list(term.match_expressions or [])
        if requirement not in term.match_expressions:
            term.match_expressions.append(copy.deepcopy(requirement))
    node.required_during_scheduling_ignored_during_execution = k8s.V1NodeSelector(node_selector_terms=terms)
    return pod


def _flatten(refs: Any, where: str) -> Iterable[tuple[str, int, str]]:
    """``(host, bytes, where)`` for every reference in ``refs``."""
    if isinstance(refs, VineyardReference):
        yield refs.host, refs.bytes, where
    elif found := tree.references_in(refs):  # a reference, or a tree's compact ones (no host: not placed)
        yield from ((r.get("host") or "", r.get("bytes", 0), where) for r in found)
    elif inline.is_inline(refs):  # a small value kept in Airflow's DB: nothing to place
        return
    elif isinstance(refs, (list, tuple)):
        for i, item in enumerate(refs):
            yield from _flatten(item, f"{where}[{i}]")
    else:
        raise errors.FluidSpecError(
            f"{where} is a {type(refs).__name__}, not a Vineyard XCom reference: only values the Vineyard "
            "XCom backend stored (arrays, DataFrames, Arrow data) have a location. Pass the references "
            "of such upstream results only."
        )


def host_bytes(refs: Any) -> dict[str, int]:
    """Bytes of the referenced objects per ``host``, largest first; references without host are left out.

    :param refs: a reference (dict from the Vineyard XCom backend, or
        :class:`~fluid_airflow.vineyard.data.reference.VineyardReference`), a reference tree, or a
        list/tuple of them; inline values (:mod:`fluid_airflow.vineyard.data.inline`) count for nothing.
    :raises FluidSpecError: an element is not a reference, or its ``bytes`` is not an int >= 0.
    """
    totals: dict[str, int] = {}
    for host, size, where in _flatten(refs if refs is not None else [], "input_refs"):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise errors.FluidSpecError(f"{where}: bytes {size!r} must be an integer >= 0")
        if host:
            totals[str(host)] = totals.get(str(host), 0) + size
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


def node_bytes(refs: Any, nodes: Mapping[str, str], located: dict[str, int] | None = None) -> dict[str, int]:
    """Bytes of the referenced objects per **node**, largest first.

    A reference's ``host`` is what its vineyardd reports as hostname. Under Fluid that is the
    worker pod's IP, not a node name: Fluid v1.0.8 ``charts/vineyard/templates/worker/statefulset.yaml``
    sets ``MY_HOST_NAME`` from ``status.podIP``, and vineyardd (v6d v0.24.2
    ``src/common/util/env.h`` ``get_hostname``, ``src/server/services/meta_service.cc``
    ``registerToEtcd``) records that as the instance's ``hostname``. ``nodes`` maps such a host
    to the node running that vineyardd (read from the API by
    :meth:`fluid_airflow.hooks.fluid.FluidHook.worker_nodes`); hosts it does not name are left out.

    :param located: bytes per host read from Vineyard's metadata
        (:func:`fluid_airflow.vineyard.lifecycle.locations.host_bytes`, which also counts migrated copies);
        default: the hosts the references recorded when they were stored.
    :raises FluidSpecError: as :func:`host_bytes`.
    """
    recorded = host_bytes(refs)  # also validates refs
    totals: dict[str, int] = {}
    for host, size in (recorded if located is None else located).items():
        node = nodes.get(host)
        if node:
            totals[node] = totals.get(node, 0) + size
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


def node_weights(
    refs: Any, nodes: Mapping[str, str], max_weight: int = 100, located: dict[str, int] | None = None
) -> dict[str, int]:
    """Preferred-affinity weight per node: ``max(1, round(max_weight * bytes_on_node / total))``.

    Bytes per node as :func:`node_bytes`. With 0 bytes in total every node gets
    ``max(1, round(max_weight / nodes))``.

    :raises FluidSpecError: as :func:`host_bytes`, or ``max_weight`` not an int in 1..100.
    """
    if isinstance(max_weight, bool) or not isinstance(max_weight, int) or not 1 <= max_weight <= 100:
        raise errors.FluidSpecError(f"max_weight {max_weight!r} must be an integer from 1 to 100")
    totals = node_bytes(refs, nodes, located)
    total = sum(totals.values())
    if not total:
        return {n: max(1, round(max_weight / len(totals))) for n in totals}
    return {n: max(1, round(max_weight * b / total)) for n, b in totals.items()}


def object_affinity(
    pod: k8s.V1Pod,
    refs: Any,
    nodes: Mapping[str, str],
    *,
    max_weight: int = 100,
    located: dict[str, int] | None = None,
) -> k8s.V1Pod:
    """Object-level affinity: prefer the nodes whose vineyardd holds the task's inputs, by size.

    One preferred term per node with the weight of :func:`node_weights` (e.g. 300 MB on node-a
    and 100 MB on node-b give 75 and 25), selecting the node by name:
    ``matchFields: [{key: metadata.name, operator: In, values: [<node>]}]``, as the DaemonSet
    controller pins its pods (kubernetes v1.36.3 ``pkg/controller/daemon/util/daemonset_util.go``
    ``ReplaceDaemonSetPodNodeNameNodeAffinity``). A field, not the ``kubernetes.io/hostname``
    label: the label's value need not equal the node name, and the name is what the worker pod
    reports (``spec.nodeName``). The API allows exactly one value per such requirement (v1.36.3
    ``pkg/apis/core/validation/validation.go`` ``ValidateNodeFieldSelectorRequirement``) and the
    scheduler scores preferred terms with fields (component-helpers v0.36.3
    ``scheduling/corev1/nodeaffinity/nodeaffinity.go`` ``NewPreferredSchedulingTerms``).
    Preferred only: the pod still runs elsewhere and then reads the objects over RPC.

    :param refs: references, reference trees, or lists of them (see :func:`host_bytes`).
    :param nodes: node name per vineyardd host (see :func:`node_bytes`).
    :param max_weight: the weight of a node holding all the bytes, 1..100.
    :param located: bytes per host from Vineyard's metadata instead of the recorded hosts.
    :returns: a deep copy of ``pod``, unchanged when no reference's host maps to a node.
    :raises FluidSpecError: as :func:`node_weights`.
    """
    weights = node_weights(refs, nodes, max_weight, located)
    pod = _copy(pod, "object_affinity")
    if weights:
        node = _node_affinity(pod)
        for name, weight in weights.items():
            term = k8s.V1NodeSelectorTerm(match_fields=[_requirement(NODE_NAME_FIELD, [name])])
            _prefer_term(node, weight, term)
    return pod


def cache_label_key(pvc: dict[str, Any] | None, namespace: str, dataset: str) -> str:
    """The cache-node label key of a Dataset, read from its PVC's labels (docs/design.md §19).

    Fluid labels the PVC with the common key (prefix ``fluid.io/s-``): ``fluid.io/s-<ns>-<ds>``
    if present, else the one that is not a capacity key (``fluid.io/s-h-…``), which is
    ``fluid.io/s-<dataset UID>`` for long names. Without PVC or label: the documented key
    :func:`~fluid_airflow.fluid.manifests.cache_node_label_key`.

    :param pvc: the PVC as a dict (``metadata.labels``), or None when it does not exist yet.
    :raises FluidSpecError: no key on the PVC and the documented one is 63 characters or more:
        Fluid then uses the Dataset's UID, unknown until the Dataset is Bound.
    """
    documented = manifests.cache_node_label_key(namespace, dataset)
    labels = ((pvc or {}).get("metadata") or {}).get("labels") or {}
    if documented in labels:
        return documented
    keys = sorted(
        k for k in labels if k.startswith(CACHE_LABEL_PREFIX) and not k.startswith(CAPACITY_LABEL_PREFIX)
    )
    if keys:
        return next((k for k in keys if labels[k] == "true"), keys[0])
    if len(documented) >= UID_KEY_LENGTH:
        where = "has no fluid.io/s- label" if pvc else "does not exist"
        raise errors.FluidSpecError(
            f"PVC {namespace}/{dataset} {where}, and for a name this long Fluid labels cache nodes "
            f"'fluid.io/s-<Dataset UID>' instead of {documented!r} ({len(documented)} >= "
            f"{UID_KEY_LENGTH} characters). Wait until the Dataset is Bound (run the bind task upstream), "
            "or use data_affinity='none'."
        )
    return documented
