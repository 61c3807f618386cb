"""Helpers of tests/test_k8s_deploy.py: the shipped xcom Dataset on the real control plane, the shipped RBAC
bound to the chart's service accounts, and an ``@task.fluid`` run whose pod container the test plays.

``xcom_dataset`` (module scope) creates deploy/fluid/xcom-dataset.yaml's Dataset and VineyardRuntime in
namespace ``airflow`` as they are, plus a worker nodeSelector for two kwok nodes of its own (the session's
other nodes stay free), waits until Fluid bound it, made its PVC and labelled both cache nodes, and creates a
pod from the shipped KubernetesExecutor pod template (``xcom-worker``), scheduled by the real kube-scheduler.

kwok runs no container, so :func:`play_base_container` does what the task pod's ``base`` container would: it
runs the runner with the spec the pod carries against the session's real vineyardd and writes the output
where KPO's sidecar exec reads it (as tests/test_k8s_task_fluid.py does; see its docstring).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane
from controlplane.cluster import write_kubeconfig
from controlplane.kwok_config import ANNOTATION_RUN_FOR
from k8s_plane import GROUP, NODE_CAPACITY, VERSION, make_namespace, read_fluid, wait_for
from kubernetes import client

from fluid_airflow.decorators.fluid import SPEC_ENV
from fluid_airflow.fluid import manifests
from fluid_airflow.runner import task as runner

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
TEMPLATE = DEPLOY / "airflow" / "pod-template.yaml"
XCOM_DATASET = DEPLOY / "fluid" / "xcom-dataset.yaml"
NS, NAME = "airflow", "airflow-xcom"  # the files' namespace and Dataset
POOL = {"fluid-airflow.test/pool": "deploy"}
TEMPLATE_POD = "xcom-worker"
RBAC = DEPLOY / "rbac"
ACCOUNTS = (
    "airflow-worker",
    "airflow-triggerer",
)  # the chart's, release `airflow` (rolebinding-example.yaml)


def docs(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of ``path``."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def pvc(core: client.CoreV1Api) -> dict[str, Any] | None:
    """The Dataset's PVC (as the API returns it), or None before Fluid made it."""
    found = [c for c in core.list_namespaced_persistent_volume_claim(NS).items if c.metadata.name == NAME]
    return client.ApiClient().sanitize_for_serialization(found[0]) if found else None


def cache_nodes(plane: ControlPlane) -> set[str]:
    """Nodes Fluid labelled as the Dataset's cache nodes."""
    key = manifests.cache_node_label_key(NS, NAME)
    return {n.metadata.name for n in plane.core_v1().list_node(label_selector=f"{key}=true").items}


def _create_and_bind(plane: ControlPlane) -> None:
    make_namespace(plane, NS)
    for node in ("deploy-node-a", "deploy-node-b"):
        plane.create_node(node, POOL, NODE_CAPACITY)
    custom = client.CustomObjectsApi(plane.api_client())
    dataset, runtime = docs(XCOM_DATASET)
    runtime["spec"]["worker"]["nodeSelector"] = POOL
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, manifests.DATASET_PLURAL, dataset)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, manifests.RUNTIME_PLURAL, runtime)
    phase = lambda: read_fluid(plane, NS, "datasets", NAME).get("status", {}).get("phase")  # noqa: E731
    wait_for(f"Dataset {NS}/{NAME} Bound", lambda: phase() == "Bound", 300, plane)
    core = plane.core_v1()
    wait_for(f"PVC {NS}/{NAME}", lambda: pvc(core) is not None, 60, plane)
    wait_for("both cache nodes labelled", lambda: len(cache_nodes(plane)) == 2, 60, plane)


@pytest.fixture(scope="module")
def xcom_dataset(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The bound xcom Dataset and the scheduled template pod (see the module docstring)."""
    _create_and_bind(control_plane)
    core = control_plane.core_v1()
    body = docs(TEMPLATE)[0]
    body["metadata"]["name"] = TEMPLATE_POD
    core.create_namespaced_pod(NS, body)
    placed = lambda: core.read_namespaced_pod(TEMPLATE_POD, NS).spec.node_name  # noqa: E731
    wait_for("the template pod scheduled", placed, 60, control_plane)
    yield control_plane


def bind_shipped_rbac(plane: ControlPlane) -> dict[str, Path]:
    """role.yaml, pod-role.yaml and rolebinding-example.yaml applied as shipped in ``airflow``, with the
    chart's worker and triggerer ServiceAccounts: a kubeconfig (bound token) per account."""
    api = plane.api_client()
    rbac, core = client.RbacAuthorizationV1Api(api), client.CoreV1Api(api)
    for role in (*docs(RBAC / "role.yaml"), *docs(RBAC / "pod-role.yaml")):
        rbac.create_namespaced_role(NS, role)
    for account in ACCOUNTS:
        core.create_namespaced_service_account(
            NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account))
        )
    for binding in docs(RBAC / "rolebinding-example.yaml"):
        rbac.create_namespaced_role_binding(NS, binding)
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    return {
        account: write_kubeconfig(
            plane.dir / f"deploy-{account}.kubeconfig", plane.server, plane.pki.ca_cert,
            {"token": core.create_namespaced_service_account_token(account, NS, request).status.token},
        )
        for account in ACCOUNTS
    }  # fmt: skip


def task_operator(conn_id: str, kubeconfig: Path, dag_id: str, deferrable: bool) -> tuple[Any, Any]:
    """An ``@task.fluid`` operator on the xcom Dataset whose KPO talks to the API as ``kubeconfig``; kwok
    keeps its pod running 20 s, the time to play its container."""
    from airflow.sdk import DAG, task

    with DAG(dag_id, schedule=None) as dag:

        @task.fluid(
            dataset_name=NAME, image="fluid-airflow:0.1.0", fluid_conn_id=conn_id, deferrable=deferrable,
            config_file=str(kubeconfig), get_logs=False, poll_interval=1,
            annotations={ANNOTATION_RUN_FOR: "20s"},
        )  # fmt: skip
        def summarise():
            return {"total": 6, "label": "done"}

        op = summarise().operator
    return op, dag


def task_context(op: Any, dag: Any) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id=op.task_id, run_id=f"manual__{dag.dag_id}", map_index=-1,
                         try_number=1, xcom_push=lambda key, value: None)  # fmt: skip
    return {"ti": ti, "run_id": ti.run_id, "dag": dag}


def play_base_container(plane: ControlPlane, task_id: str, xcom_dir: Path, socket: Path) -> None:
    """Run the runner with the spec the task's pod carries; its output goes where the sidecar exec reads."""
    core = plane.core_v1()
    found = lambda: core.list_namespaced_pod(NS, label_selector=f"task_id={task_id}").items  # noqa: E731
    (pod,) = wait_for(f"the pod of {task_id}", found, 30, plane)
    base = next(c for c in pod.spec.containers if c.name == "base")
    spec = json.loads(base64.b64decode(next(e.value for e in base.env if e.name == SPEC_ENV)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINEYARD_IPC_SOCKET", str(socket))
        assert runner.execute(spec, xcom_dir / "return.json") == 0
    (xcom_dir / "return.json").chmod(0o644)  # kwok execs the sidecar's `cat` as uid 65534
