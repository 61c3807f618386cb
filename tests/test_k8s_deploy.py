"""What deploy/ ships, on the real control plane (issue 17: RBAC, chart values, pod template, NetworkPolicy).

- Every manifest passes a server-side dry run (``dry_run=All``, ``fieldValidation=Strict``) on the real
  kube-apiserver (v1.36.3; Fluid's CRDs for Dataset/VineyardRuntime) and, for core kinds, kubernetes-validate.
- The XCom Dataset file and the KubernetesExecutor pod template are what ``fluid_airflow.fluid.manifests`` and
  ``fluid_airflow.fluid.pods`` build; the chart values carry the template's additions, and every key they
  use is in the chart's schema (``tests/airflow_chart/values_schema_keys.json``, with its source).
- The Dataset of deploy/fluid/xcom-dataset.yaml, bound by Fluid's controllers: a pod from the template is
  placed by the real kube-scheduler on a cache node Fluid labelled, with the PVC mounted; the NetworkPolicy
  selects the workers Fluid made, on their real RPC port, and admits that pod.
- @task.fluid runs, sync and deferrable, as the chart's worker and triggerer service accounts bound by
  deploy/rbac/rolebinding-example.yaml, nothing else (tests/k8s_deploy_plane.py plays the pod's container);
  a Role without `create` on pods/exec fails the task.
"""

from __future__ import annotations

import asyncio
import copy
import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk.exceptions import TaskDeferred
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_deploy_plane import (
    DEPLOY,
    NAME,
    NS,
    RBAC,
    TEMPLATE,
    TEMPLATE_POD,
    XCOM_DATASET,
    bind_shipped_rbac,
    cache_nodes,
    docs,
    play_base_container,
    pvc,
    task_context,
    task_operator,
    xcom_dataset,  # noqa: F401 - a module fixture
)
from k8s_plane import GROUP, VERSION, connected, make_namespace, wait_for
from kubernetes import client

from fluid_airflow import config
from fluid_airflow.fluid import manifests, pods
from fluid_airflow.fluid.manifests import VINEYARD_MOUNT_PATH

VALUES = DEPLOY / "airflow" / "values.yaml"
POLICY = DEPLOY / "networkpolicy.yaml"
SCHEMA = Path(__file__).parent / "airflow_chart" / "values_schema_keys.json"
MANIFESTS = [
    DEPLOY / "rbac" / "role.yaml",
    DEPLOY / "rbac" / "pod-role.yaml",
    DEPLOY / "rbac" / "rolebinding-example.yaml",
    POLICY,
    TEMPLATE,
    XCOM_DATASET,
]
KUBE_VERSION = "1.36"  # kubernetes-validate schemas of the control plane's Kubernetes minor


def dry_run(api: client.ApiClient, doc: dict[str, Any], namespace: str) -> Any:
    """Create ``doc`` in ``namespace`` with ``dryRun=All`` and strict field validation: the API server
    validates, defaults and authorizes it, and stores nothing."""
    kind, kw = doc["kind"], {"dry_run": "All", "field_validation": "Strict"}
    if doc["apiVersion"] == manifests.API_VERSION:
        plural = {"Dataset": manifests.DATASET_PLURAL, "VineyardRuntime": manifests.RUNTIME_PLURAL}[kind]
        return client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, doc, **kw
        )
    create = {
        "Role": client.RbacAuthorizationV1Api(api).create_namespaced_role,
        "RoleBinding": client.RbacAuthorizationV1Api(api).create_namespaced_role_binding,
        "NetworkPolicy": client.NetworkingV1Api(api).create_namespaced_network_policy,
        "Pod": client.CoreV1Api(api).create_namespaced_pod,
    }[kind]
    return create(namespace, doc, **kw)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_passes_a_dry_run_and_kubernetes_validate(control_plane: ControlPlane, path: Path):  # noqa: F811
    ns = f"dry-{path.stem}"
    make_namespace(control_plane, ns)
    api = control_plane.api_client()
    accounts = lambda: control_plane.core_v1().list_namespaced_service_account(ns).items  # noqa: E731
    wait_for(f"ServiceAccount {ns}/default (pods need it)", accounts, 30, control_plane)
    for doc in docs(path):
        assert doc["metadata"].get("namespace") in (None, NS), doc["metadata"]  # documented as `airflow`
        body = copy.deepcopy(doc)
        body["metadata"]["namespace"] = ns
        stored = api.sanitize_for_serialization(dry_run(api, body, ns))
        assert stored["metadata"]["name"] == doc["metadata"]["name"]
        if doc["apiVersion"] != manifests.API_VERSION:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_the_xcom_dataset_is_what_the_builders_make():
    dataset, runtime = docs(XCOM_DATASET)
    assert dataset == manifests.build_dataset(NAME, NS)
    built = manifests.build_vineyard_runtime(
        NAME, NS, replicas=2, cache_capacity="8Gi", network_mode="ContainerNetwork"
    )
    assert runtime == built  # images: the installed vineyard client's version (manifests.vineyard_images)


def _pod(doc: dict[str, Any]) -> client.V1Pod:
    return client.ApiClient()._ApiClient__deserialize(copy.deepcopy(doc), "V1Pod")  # type: ignore[attr-defined]


def _skeleton(doc: dict[str, Any]) -> dict[str, Any]:
    """The template without what the builders add: the Dataset's volume and mount, VINEYARD_CONFIG and the
    node affinity."""
    bare = copy.deepcopy(doc)
    spec = bare["spec"]
    base = next(c for c in spec["containers"] if c["name"] == "base")
    base.pop("volumeMounts")
    base["env"] = [e for e in base["env"] if e["name"] != pods.CONFIG_ENV]
    spec.pop("volumes")
    spec.pop("affinity")
    return bare


def test_the_pod_template_is_what_the_builders_make():
    """Nothing in the template's Vineyard part is hand-made: mount_dataset + data_affinity('required') with
    Fluid's cache-node key, applied to the rest of the template, give the file back."""
    template = docs(TEMPLATE)[0]
    built = pods.mount_dataset(_pod(_skeleton(template)), NAME)
    built = pods.data_affinity(built, manifests.cache_node_label_key(NS, NAME), "required")
    assert client.ApiClient().sanitize_for_serialization(built) == template
    base = template["spec"]["containers"][0]
    backend_socket = {e["name"]: e["value"] for e in base["env"]}["AIRFLOW__FLUID__VINEYARD_SOCKET"]
    assert backend_socket == f"{VINEYARD_MOUNT_PATH}/vineyard-worker.sock"  # Fluid's worker socket name (§18)
    assert template["metadata"]["labels"] == {"tier": "airflow", "component": "worker", "release": "airflow"}


def _key_paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every mapping key in ``value`` (lists are leaves: their items are schema-checked)."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}{key}"
            yield path
            if not any(path.startswith(p) for p in ("workers.extraVolume", "workers.affinity")):
                yield from _key_paths(item, path + ".")


def _schema_has(schema: dict[str, Any], path: str) -> bool:
    node: dict[str, Any] | None = schema
    for part in path.split("."):
        node = (node or {}).get("properties", {}).get(part)
    return node is not None


def test_every_values_key_is_in_the_charts_schema():
    values, schema = yaml.safe_load(VALUES.read_text()), json.loads(SCHEMA.read_text())
    assert "5f1ee0aea931bd3a221eab567f6ad724c587b43a" in schema["$comment"]  # where it was copied from
    missing = [p for p in _key_paths(values) if not _schema_has(schema, p)]
    assert not missing, missing
    jsonschema.validate(values, schema)


def test_the_values_give_worker_pods_what_the_template_has():
    """The chart builds its own worker pod template from workers.* (apache/airflow
    chart/files/pod-template-file.kubernetes-helm-yaml): the same volume, mount, env and affinity."""
    values, template = yaml.safe_load(VALUES.read_text()), docs(TEMPLATE)[0]
    workers, spec = values["workers"], template["spec"]
    assert workers["extraVolumes"] == spec["volumes"]
    assert workers["extraVolumeMounts"] == spec["containers"][0]["volumeMounts"]
    assert workers["env"] == spec["containers"][0]["env"]
    assert workers["affinity"] == spec["affinity"]
    assert values["images"]["airflow"] == values["images"]["pod_template"]  # one image (deploy/image)


def test_the_values_configure_the_backend_and_the_connections():
    values = yaml.safe_load(VALUES.read_text())
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["AIRFLOW__CORE__XCOM_BACKEND"] == "fluid_airflow.vineyard.xcom.VineyardXComBackend"
    names = [*env, *(e["name"] for e in values["workers"]["env"])]
    fluid = {n.removeprefix("AIRFLOW__FLUID__").lower() for n in names if n.startswith("AIRFLOW__FLUID__")}
    assert "vineyard_socket" in fluid  # worker pods: the socket Fluid's fuse links under the PVC
    assert fluid and fluid <= set(config.OPTIONS), fluid - set(config.OPTIONS)
    conn = json.loads(env["AIRFLOW_CONN_FLUID_DEFAULT"])
    assert conn == {
        "conn_type": "fluid",
        "extra": {"backend": "kubernetes", "in_cluster": True, "namespace": NS},
    }
    assert json.loads(env["AIRFLOW_CONN_KUBERNETES_DEFAULT"])["extra"]["in_cluster"] is True
    # The backend's connection: the socket where a worker pod has it, else the xcom Dataset over RPC (issue
    # 17, build 4), so the scheduler releases at run end and keep_for / keep_failed_for keep their defaults.
    assert env["AIRFLOW__FLUID__VINEYARD_CONN_ID"] == "vineyard_xcom"
    vineyard = json.loads(env["AIRFLOW_CONN_VINEYARD_XCOM"])
    assert vineyard == {
        "conn_type": "vineyard",
        "extra": {"ipc_socket": pods_socket(), "dataset": f"{NS}/{NAME}", "fluid_conn_id": "fluid_default"},
    }
    assert not fluid & {"keep_for", "keep_failed_for", "expiry_interval"}, fluid
    image = values["images"]["pod_template"]
    assert env["AIRFLOW_VAR_FLUID_TASK_IMAGE"] == f"{image['repository']}:{image['tag']}"


def pods_socket() -> str:
    """The socket worker pods are given (``[fluid] vineyard_socket`` of the values' ``workers.env``)."""
    env = yaml.safe_load(VALUES.read_text())["workers"]["env"]
    (socket,) = [e["value"] for e in env if e["name"] == "AIRFLOW__FLUID__VINEYARD_SOCKET"]
    return str(socket)


def test_a_template_pod_lands_on_a_cache_node_and_mounts_the_pvc(xcom_dataset: ControlPlane):  # noqa: F811
    """The real kube-scheduler placed the template's pod on a node Fluid labelled and that runs a worker; the
    template's node-affinity key is the one read from Fluid's PVC (pods.cache_label_key)."""
    core = xcom_dataset.core_v1()
    template = docs(TEMPLATE)[0]
    required = template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    key = required["nodeSelectorTerms"][0]["matchExpressions"][0]["key"]
    assert key == pods.cache_label_key(pvc(core), NS, NAME)
    pod = core.read_namespaced_pod(TEMPLATE_POD, NS)
    workers = core.list_namespaced_pod(NS, label_selector=manifests.worker_selector(NAME)).items
    assert pod.spec.node_name in cache_nodes(xcom_dataset)
    assert pod.spec.node_name in {w.spec.node_name for w in workers}
    # the API server adds the service account's token volume (kube-api-access-*) next to ours
    (volume,) = [v for v in pod.spec.volumes if v.persistent_volume_claim]
    assert volume.persistent_volume_claim.claim_name == NAME
    (mount,) = [m for m in pod.spec.containers[0].volume_mounts if m.name == volume.name]
    assert mount.mount_path == VINEYARD_MOUNT_PATH


def _selector(peer: dict[str, Any]) -> str:
    """A NetworkPolicy peer's podSelector as a label-selector string the API understands."""
    selector = peer["podSelector"]
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        op = expr["operator"]
        parts.append(
            expr["key"] if op == "Exists" else f"{expr['key']} {op.lower()} ({','.join(expr['values'])})"
        )
    return ",".join(parts)


def test_the_network_policy_selects_the_workers_rpc_port_and_admits_airflow(xcom_dataset: ControlPlane):  # noqa: F811
    """On the pods Fluid really made (ContainerNetwork): the policy selects exactly the runtime's workers, its
    port is their `rpc` container port, and its first peer admits the template's worker pod."""
    core = xcom_dataset.core_v1()
    policy = docs(POLICY)[0]["spec"]
    selected = core.list_namespaced_pod(NS, label_selector=_selector(policy)).items
    workers = core.list_namespaced_pod(NS, label_selector=manifests.worker_selector(NAME)).items
    assert {p.metadata.name for p in selected} == {w.metadata.name for w in workers} and len(workers) == 2
    for worker in workers:
        assert not worker.spec.host_network  # NetworkPolicy does not apply to hostNetwork pods
        ports = {p.name: p.container_port for c in worker.spec.containers for p in c.ports or []}
        assert [p["port"] for p in policy["ingress"][0]["ports"]] == [ports["rpc"]]
    airflow_peer = _selector(policy["ingress"][0]["from"][0])
    admitted = {p.metadata.name for p in core.list_namespaced_pod(NS, label_selector=airflow_peer).items}
    assert TEMPLATE_POD in admitted, admitted
    peers = {_selector(p) for p in policy["ingress"][0]["from"]}
    assert (
        _selector({"podSelector": {"matchExpressions": [{"key": pods.DATASET_LABEL, "operator": "Exists"}]}})
        in peers
    )


CONN = "fluid_k8s_deploy"
EXPECTED = {"total": 6, "label": "done"}


def test_the_hooks_read_the_values_connections(monkeypatch: pytest.MonkeyPatch):
    """The connections as Airflow parses the values' env: the Fluid hook and KPO's hook both go in-cluster,
    in namespace `airflow`."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    from fluid_airflow.hooks.fluid import FluidHook

    for item in yaml.safe_load(VALUES.read_text())["env"]:
        if item["name"].startswith("AIRFLOW_CONN_"):
            monkeypatch.setenv(item["name"], item["value"])
    fluid = FluidHook()  # fluid_default, what the pipeline's operators use
    assert (fluid.backend, fluid.namespace(), fluid._kube_args()) == ("kubernetes", NS, {"in_cluster": True})
    kpo = KubernetesHook(conn_id="kubernetes_default")
    assert kpo._get_field("in_cluster") is True and kpo.get_namespace() == NS


@pytest.fixture(scope="module")
def accounts(xcom_dataset: ControlPlane) -> dict[str, Path]:  # noqa: F811
    return bind_shipped_rbac(xcom_dataset)


@pytest.fixture
def xcom_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The host folder KPO's sidecar exec reads (kwok execs as uid 65534, so a world-readable one)."""
    with tempfile.TemporaryDirectory(prefix="fa-xcom-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        monkeypatch.setattr(PodDefaults, "XCOM_MOUNT_PATH", str(folder))
        yield folder


def _run_sync(plane: ControlPlane, kubeconfig: Path, dag_id: str, xcom_dir: Path, socket: Path) -> Any:
    op, dag = task_operator(CONN, kubeconfig, dag_id, deferrable=False)
    player = threading.Thread(target=play_base_container, args=(plane, op.task_id, xcom_dir, socket))
    with connected(CONN, kubeconfig, NS):
        player.start()  # the sync path blocks in execute until the pod completes
        try:
            return op.execute(task_context(op, dag))
        finally:
            player.join(60)


def test_task_fluid_runs_as_the_charts_worker_account(xcom_dataset, accounts, xcom_dir, vineyardd):  # noqa: F811
    """KPO's list (reattach lookup), create, get, exec into the xcom sidecar and delete, and role.yaml's PVC
    lookup, all as airflow-worker bound by the example RoleBindings; its pod log readable by it too."""
    worker = accounts["airflow-worker"]
    assert _run_sync(xcom_dataset, worker, "fa_deploy_sync", xcom_dir, vineyardd.socket_path) == EXPECTED
    as_worker = client.CoreV1Api(xcom_dataset.api_client(worker))
    assert as_worker.read_namespaced_pod_log(TEMPLATE_POD, NS)  # pods/log get (kwok serves a fixed line)


async def _first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def test_deferrable_task_fluid_waits_as_the_triggerer_account(xcom_dataset, accounts, xcom_dir, vineyardd):  # noqa: F811
    """Deferred by the worker, KPO's trigger runs as airflow-triggerer (pod get, event watch), and the task
    resumes on a worker."""
    op, dag = task_operator(CONN, accounts["airflow-worker"], "fa_deploy_deferred", deferrable=True)
    context = task_context(op, dag)
    with connected(CONN, accounts["airflow-worker"], NS):
        with pytest.raises(TaskDeferred) as deferred:
            op.execute(context)
        play_base_container(xcom_dataset, op.task_id, xcom_dir, vineyardd.socket_path)
        trigger = deferred.value.trigger
        trigger.config_dict = yaml.safe_load(
            accounts["airflow-triggerer"].read_text()
        )  # the triggerer's identity
        event = asyncio.run(_first_event(trigger))
        assert event["status"] == "success", event
        assert getattr(op, deferred.value.method_name)(context, event) == EXPECTED


def _chain(exc: BaseException | None) -> str:
    parts = []
    while exc is not None and len(parts) < 10:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def test_without_create_on_pods_exec_the_sidecar_read_is_refused(xcom_dataset, accounts, xcom_dir, vineyardd):  # noqa: F811
    """Kubernetes 1.36 authorizes the exec WebSocket upgrade as `create` on pods/exec: with `get` alone (what
    API servers before 1.35 checked) the task fails reading its result. The shipped Role is restored after."""
    rbac = client.RbacAuthorizationV1Api(xcom_dataset.api_client())
    (shipped,) = docs(RBAC / "pod-role.yaml")
    get_only = copy.deepcopy(shipped)
    for rule in get_only["rules"]:
        if rule["resources"] == ["pods/exec"]:
            rule["verbs"] = ["get"]
    rbac.replace_namespaced_role(shipped["metadata"]["name"], NS, get_only)
    try:
        with pytest.raises(Exception) as failed:
            _run_sync(
                xcom_dataset, accounts["airflow-worker"], "fa_deploy_no_exec", xcom_dir, vineyardd.socket_path
            )
    finally:
        rbac.replace_namespaced_role(shipped["metadata"]["name"], NS, shipped)
    text = _chain(failed.value)
    assert "403" in text or "forbidden" in text.lower(), text
