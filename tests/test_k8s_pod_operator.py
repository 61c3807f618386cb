"""FluidPodOperator's pods on the real control plane (moved here from the API double).

The cache-node label key comes from the PVC Fluid v1.0.8 creates once the Dataset is Bound
(``fluid.io/s-<ns>-<dataset>``, or ``fluid.io/s-<Dataset UID>`` when that key would reach 63 characters);
the pod built with it is accepted by the real API server and placed by the real kube-scheduler on the cache
node Fluid labelled (data affinity ``required``). The pure pod builders stay in ``tests/test_fluid_pods.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import GROUP, NODE_CAPACITY, VERSION, connected, make_namespace, read_fluid, wait_for
from kubernetes import client
from kubernetes.client import ApiClient
from structlog.testing import capture_logs

from fluid_airflow import exceptions as errors
from fluid_airflow.hooks.fluid import FluidHook
from fluid_airflow.operators.pod import FluidPodOperator

CONN, NS = "fluid_k8s_pods", "k8s-pods"
LONG_NS = "team-analytics-production"  # with LONG_DS: fluid.io/s-<ns>-<ds> is 63 chars -> UID key
LONG_DS = "flights-2013-cleaned-cache"
POOL = "pods"


def make_op(plane: ControlPlane, **kw) -> FluidPodOperator:
    args = {"task_id": "train", "image": "python:3.11", "cmds": ["python", "-c"], "arguments": ["print(1)"]}
    return FluidPodOperator(
        **{
            **args,
            "dataset_name": "flights",
            "fluid_conn_id": CONN,
            "config_file": str(plane.admin_kubeconfig),
            **kw,
        }
    )


def bind(plane: ControlPlane, namespace: str, name: str) -> None:
    """Dataset + VineyardRuntime created through the API (our operators refuse the long name), bound by
    Fluid, its PVC created; one worker, on our node pool."""
    custom = client.CustomObjectsApi(plane.api_client())
    meta = {"name": name, "namespace": namespace}
    dataset = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Dataset", "metadata": meta,
               "spec": {"accessModes": ["ReadWriteMany"]}}  # fmt: skip
    runtime_spec = {"replicas": 1, "tieredstore": {"levels": [{"mediumtype": "MEM", "quota": "1Gi"}]},
                    "worker": {"nodeSelector": {"fluid-airflow.test/pool": POOL}}}  # fmt: skip
    runtime = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VineyardRuntime",
        "metadata": meta,
        "spec": runtime_spec,
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", dataset)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "vineyardruntimes", runtime)
    phase = lambda: read_fluid(plane, namespace, "datasets", name).get("status", {}).get("phase")  # noqa: E731
    wait_for(f"Dataset {namespace}/{name} Bound", lambda: phase() == "Bound", 240, plane)
    core = plane.core_v1()
    claims = lambda: [p.metadata.name for p in core.list_namespaced_persistent_volume_claim(namespace).items]  # noqa: E731
    wait_for(f"PVC {namespace}/{name}", lambda: name in claims(), 60, plane)


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:  # noqa: F811
    for ns in (NS, LONG_NS):
        make_namespace(control_plane, ns)
    for node in ("pods-node-a", "pods-node-b"):
        control_plane.create_node(node, {"fluid-airflow.test/pool": POOL}, NODE_CAPACITY)
    with connected(CONN, control_plane.admin_kubeconfig, NS):
        yield control_plane


def test_required_data_affinity_puts_the_pod_on_the_cache_node(plane: ControlPlane):
    """The key read from Fluid's PVC; the real scheduler places the pod on the node Fluid labelled."""
    bind(plane, NS, "flights")
    key = "fluid.io/s-k8s-pods-flights"
    core = plane.core_v1()
    cache_nodes = lambda: [n.metadata.name for n in core.list_node(label_selector=f"{key}=true").items]  # noqa: E731
    (cache_node,) = wait_for(f"the cache node labelled {key}", cache_nodes, 60, plane)
    pod = make_op(
        plane, data_affinity="required", name="placed", random_name_suffix=False
    ).build_pod_request_obj()
    body = ApiClient().sanitize_for_serialization(pod)
    assert body["metadata"]["namespace"] == NS  # from the fluid connection
    required = body["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": key, "operator": "In", "values": ["true"]}]}
    ]
    core.create_namespaced_pod(NS, body)  # the real API server validates it
    placed = lambda: core.read_namespaced_pod("placed", NS).spec.node_name  # noqa: E731
    assert wait_for("pod placed scheduled", placed, 60, plane) == cache_node
    listed = core.list_namespaced_pod(NS, label_selector="fluid-airflow/dataset=flights").items
    assert [p.metadata.name for p in listed] == ["placed"]
    assert [p["metadata"]["name"] for p in FluidHook(CONN).pods_using_claim(NS, "flights")] == ["placed"]


def test_long_names_use_the_uid_key_fluid_put_on_the_pvc(plane: ControlPlane):
    documented = f"fluid.io/s-{LONG_NS}-{LONG_DS}"
    assert len(documented) == 63  # Fluid switches to the UID key from 63 characters on
    bind(plane, LONG_NS, LONG_DS)
    uid = read_fluid(plane, LONG_NS, "datasets", LONG_DS)["metadata"]["uid"]
    pvc = plane.core_v1().read_namespaced_persistent_volume_claim(LONG_DS, LONG_NS)
    assert f"fluid.io/s-{uid}" in (pvc.metadata.labels or {}), pvc.metadata.labels
    op = make_op(plane, dataset_name=LONG_DS, namespace=LONG_NS)
    body = ApiClient().sanitize_for_serialization(op.build_pod_request_obj())
    preferred = body["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred == [{"weight": 100, "preference": {"matchExpressions": [
        {"key": f"fluid.io/s-{uid}", "operator": "In", "values": ["true"]}]}}]  # fmt: skip
    assert body["metadata"]["namespace"] == LONG_NS


def test_without_pvc_the_documented_key_with_a_warning_or_an_error_for_long_names(plane: ControlPlane):
    op = make_op(plane, dataset_name="not-bound")
    with capture_logs() as logs:
        body = ApiClient().sanitize_for_serialization(op.build_pod_request_obj())
    assert any("not Bound yet" in entry["event"] and entry["log_level"] == "warning" for entry in logs), logs
    preferred = body["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0]["preference"]["matchExpressions"][0]["key"] == "fluid.io/s-k8s-pods-not-bound"
    with pytest.raises(errors.FluidSpecError, match="Dataset UID"):
        make_op(plane, dataset_name="flights-2013-cleaned-cachf", namespace=LONG_NS).build_pod_request_obj()
