"""Build 3 of issue 15: least privilege, proven on the real API server (RBAC authorisation).

The Role is ``deploy/rbac/role.yaml`` (shown in the README). A ServiceAccount bound to it runs the create,
bind, wait (sensor) and cleanup operators plus every other FluidHook call; a Role lacking any one of its verbs
makes the call that needs it fail with FluidPermissionError naming the verb and resource (a real 403).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import NODE_CAPACITY, connected, make_namespace
from kubernetes import client

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid.pods import DATASET_LABEL
from fluid_airflow.hooks.fluid import FluidHook
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator
from fluid_airflow.sensors.fluid import FluidDatasetSensor

ROLE_FILE = Path(__file__).resolve().parents[1] / "deploy" / "rbac" / "role.yaml"
CONN, NAME = "fluid_k8s_rbac", "rbac"
RUN_LABELS = {"dag_id": "fa_rbac", "run_id": "manual__rbac"}  # KPO's labels of this DAG run's task pods
RUN = {
    "ti": SimpleNamespace(
        dag_id="fa_rbac", task_id="cleanup", run_id="manual__rbac", map_index=-1, try_number=1
    ),
    "run_id": "manual__rbac",
    "dag": None,
}


def role_doc() -> dict:
    return yaml.safe_load(ROLE_FILE.read_text())


def role_pairs(doc: dict) -> set[tuple[str, str]]:
    """``(resource, verb)`` pairs the Role grants (resources qualified by group as in our errors)."""
    pairs = set()
    for rule in doc["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                qualified = f"{resource}.{group}" if group else resource
                pairs |= {(qualified, verb) for verb in rule["verbs"]}
    return pairs


def limited(plane: ControlPlane, namespace: str, doc: dict) -> Path:
    """Namespace + the Role ``doc`` in it + a ServiceAccount bound to it: that account's kubeconfig."""
    make_namespace(plane, namespace)
    rbac = client.RbacAuthorizationV1Api(plane.api_client())
    rbac.create_namespaced_role(namespace, doc)
    return plane.service_account_kubeconfig(namespace, "airflow", doc["metadata"]["name"])


def claim_pod(plane: ControlPlane, namespace: str) -> None:
    """A pod (created as admin) mounting the Dataset's PVC, labelled as this DAG run's task pod would be
    (:data:`RUN`): cleanup must delete it."""
    volume = client.V1Volume(
        name="vy", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=NAME)
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="user", labels={DATASET_LABEL: NAME, **RUN_LABELS}),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="base", image="busybox")], volumes=[volume]
        ),
    )
    plane.core_v1().create_namespaced_pod(namespace, pod)


def create() -> dict:
    return FluidCreateDatasetOperator(task_id="create", dataset_name=NAME, fluid_conn_id=CONN).execute({})


def bind(wait: bool) -> dict:
    return FluidBindVineyardRuntimeOperator(
        task_id="bind", dataset_name=NAME, fluid_conn_id=CONN, replicas=1, cache_capacity="1Gi",
        wait=wait, timeout=240, poll_interval=1,
    ).execute({})  # fmt: skip


def cleanup() -> dict:
    return FluidCleanupOperator(
        task_id="cleanup", dataset_name=NAME, fluid_conn_id=CONN, timeout=120, poll_interval=1
    ).execute(RUN)


def test_operators_run_under_the_documented_role(control_plane: ControlPlane):  # noqa: F811
    """create, bind + wait, sensor, PVC lookup, RPC endpoints, UI phases, connection test and cleanup
    (deleting a pod that mounts the PVC) all succeed as a ServiceAccount bound to deploy/rbac/role.yaml."""
    ns = "k8s-rbac"
    kubeconfig = limited(control_plane, ns, role_doc())
    control_plane.create_node("rbac-node", {"fluid-airflow.test/pool": "rbac"}, NODE_CAPACITY)
    with connected(CONN, kubeconfig, ns):
        assert create()["created"] is True
        assert bind(wait=True)["name"] == NAME
        sensor = FluidDatasetSensor(task_id="wait", dataset_name=NAME, fluid_conn_id=CONN, target="ready")
        assert sensor.poke({}) is True
        hook = FluidHook(CONN)
        assert hook.test_connection()[0] is True
        assert {p["kind"] for p in hook.phases()} == {"Dataset", "VineyardRuntime"}
        # the data-affinity lookup; Fluid makes the PVC just after Bound (runtime_controller.go)
        deadline = time.monotonic() + 60
        while hook.client.get_pvc(ns, NAME) is None and time.monotonic() < deadline:
            time.sleep(1)
        assert hook.client.get_pvc(ns, NAME) is not None
        assert len(hook.rpc_endpoints(ns, NAME)) == 1  # the vineyard connection's `dataset` lookup
        claim_pod(control_plane, ns)
        result = cleanup()
    assert result == {"pods": ["user"], "dataset": True, "runtime": True}


# What needs each verb of the Role: the call, run in a namespace whose Role lacks just that verb.
NEEDS: dict[tuple[str, str], Callable[[str], object]] = {
    ("datasets.data.fluid.io", "get"): lambda ns: create(),
    ("datasets.data.fluid.io", "create"): lambda ns: create(),
    ("datasets.data.fluid.io", "list"): lambda ns: FluidHook(CONN).phases(),
    ("datasets.data.fluid.io", "delete"): lambda ns: cleanup(),
    ("vineyardruntimes.data.fluid.io", "get"): lambda ns: bind(wait=False),
    ("vineyardruntimes.data.fluid.io", "create"): lambda ns: bind(wait=False),
    ("vineyardruntimes.data.fluid.io", "list"): lambda ns: FluidHook(CONN).phases(),
    ("vineyardruntimes.data.fluid.io", "delete"): lambda ns: cleanup(),
    ("pods", "list"): lambda ns: FluidHook(CONN).readiness(ns, NAME),
    ("pods", "delete"): lambda ns: cleanup(),
    ("persistentvolumeclaims", "get"): lambda ns: FluidHook(CONN).client.get_pvc(ns, NAME),
    ("configmaps", "get"): lambda ns: FluidHook(CONN).rpc_endpoints(ns, NAME),
}


def test_every_verb_of_the_role_is_used():
    """Nothing more: each (resource, verb) the Role grants has a call below that fails without it."""
    assert set(NEEDS) == role_pairs(role_doc())


def _without(doc: dict, resource: str, verb: str) -> dict:
    rules = []
    for rule in doc["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                verbs = list(rule["verbs"])
                if (f"{res}.{group}" if group else res) == resource:
                    verbs.remove(verb)
                if verbs:
                    rules.append({"apiGroups": [group], "resources": [res], "verbs": verbs})
    return {**doc, "rules": rules}


@pytest.mark.parametrize("resource, verb", sorted(NEEDS), ids=lambda v: v.split(".")[0])
def test_a_missing_verb_is_named(control_plane: ControlPlane, resource: str, verb: str):  # noqa: F811
    """A real 403 becomes FluidPermissionError naming the verb, the resource and the namespace."""
    ns = f"rbac-no-{verb}-{resource.split('.')[0]}"
    kubeconfig = limited(control_plane, ns, _without(role_doc(), resource, verb))
    if (resource, verb) == ("pods", "delete"):
        claim_pod(control_plane, ns)
    with connected(CONN, kubeconfig, ns), pytest.raises(errors.FluidPermissionError) as denied:
        NEEDS[(resource, verb)](ns)
    message = str(denied.value)
    assert f"RBAC verb '{verb}' on '{resource}' in namespace '{ns}'" in message, message
    assert "forbidden" in message.lower(), message


def test_the_readme_shows_this_role():
    """The README's Role is the file the tests run under, verbatim."""
    readme = (ROLE_FILE.parents[2] / "README.md").read_text()
    assert f"```yaml\n{ROLE_FILE.read_text()}```" in readme
