"""Smoke tests of the real control plane (tests/controlplane/): the API server with RBAC, kwok nodes and
exec, a least-privilege service account, and Fluid's own controllers binding a Vineyard Dataset.

Nothing here sets a Fluid status: phases, PV/PVC, Helm release and node labels come from Fluid v1.0.8's
``dataset-controller`` and ``vineyardruntime-controller`` (``pkg/ddc/base/setup.go``, ``pkg/ddc/vineyard``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import GROUP, VERSION, wait_for
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

NODES = ("cp-node-a", "cp-node-b", "cp-node-c")


@pytest.fixture(scope="module")
def nodes(control_plane: ControlPlane) -> list[str]:  # noqa: F811
    for name in NODES:
        control_plane.create_node(name, {"fluid-airflow.test/pool": "smoke"})
    return list(NODES)


def _namespace(plane: ControlPlane, name: str) -> str:
    core = plane.core_v1()
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        f"ServiceAccount {name}/default",
        lambda: _exists(lambda: core.read_namespaced_service_account("default", name)),
        30,
        plane,
    )
    return name


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _pod(name: str, node: str | None = None, labels: dict[str, str] | None = None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(node_name=node, containers=[client.V1Container(name="base", image="busybox")]),
    )


def test_control_plane_serves_rbac_and_schedules_on_kwok_nodes(control_plane: ControlPlane, nodes: list[str]):  # noqa: F811
    """The real scheduler places a pod on a kwok node, kwok makes it Running; warm start under a minute."""
    assert control_plane.start_seconds < 60, f"warm start took {control_plane.start_seconds:.1f}s"
    ns = _namespace(control_plane, "cp-sched")
    core = control_plane.core_v1()
    core.create_namespaced_pod(ns, _pod("p"))
    pod = wait_for(
        "pod p Running",
        lambda: (p := core.read_namespaced_pod("p", ns)).status.phase == "Running" and p,
        60,
        control_plane,
    )
    assert pod.spec.node_name in nodes
    # kwok holds each node's Lease, as a kubelet does: without it kube-controller-manager finds every node
    # not-Ready after its 50 s grace and marks their Running pods not Ready for good.
    leases = client.CoordinationV1Api(control_plane.api_client())
    held = lambda: {x.metadata.name for x in leases.list_namespaced_lease("kube-node-lease").items}  # noqa: E731
    wait_for("a node Lease per node", lambda: set(nodes) <= held(), 30, control_plane)


def test_service_account_kubeconfig_is_least_privilege(control_plane: ControlPlane):  # noqa: F811
    """A service account bound to a Role may do what the Role allows and gets a real 403 otherwise."""
    ns = _namespace(control_plane, "cp-rbac")
    rbac = client.RbacAuthorizationV1Api(control_plane.api_client())
    rule = client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])
    rbac.create_namespaced_role(ns, client.V1Role(metadata=client.V1ObjectMeta(name="reader"), rules=[rule]))
    limited = client.CoreV1Api(
        control_plane.api_client(control_plane.service_account_kubeconfig(ns, "runner", "reader"))
    )
    wait_for("RoleBinding effective", lambda: limited.list_namespaced_pod(ns) is not None, 10, control_plane)
    with pytest.raises(ApiException) as denied:
        limited.create_namespaced_pod(ns, _pod("nope"))
    assert denied.value.status == 403
    message = json.loads(denied.value.body)["message"]
    assert 'User "system:serviceaccount:cp-rbac:runner" cannot create resource "pods"' in message, message


def test_kwok_exec_is_confined(control_plane: ControlPlane, nodes: list[str]):  # noqa: F811
    """kwok's exec runs on this host: as uid 65534 in kwok's own PID namespace, so KPO's ``kill -s SIGINT 1``
    cannot signal the host's PID 1 (nor any host process) and root-owned files stay untouched."""
    ns = _namespace(control_plane, "cp-exec")
    core = control_plane.core_v1()
    core.create_namespaced_pod(ns, _pod("sh", node=nodes[0]))
    wait_for(
        "pod sh Running",
        lambda: core.read_namespaced_pod("sh", ns).status.phase == "Running",
        60,
        control_plane,
    )
    guard = control_plane.dir / "root-owned"
    guard.write_text("untouched\n")
    host_pid = os.getpid()  # this pytest process: a host process kwok's namespace must not reach
    script = (
        "id -u; id -g; kill -s SIGINT 1 && echo KILLED-1; "
        f"kill -s SIGINT {host_pid} && echo KILLED-HOST; "
        f"echo x >> {guard} && echo WROTE; echo procs=$(ls /proc | grep -c '^[0-9]')"
    )
    out = stream(
        core.connect_get_namespaced_pod_exec,
        "sh",
        ns,
        container="base",
        command=["/bin/bash", "-c", script],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    lines = out.splitlines()
    assert lines[:2] == ["65534", "65534"], out
    assert "kill: (1) - Operation not permitted" in out and "KILLED-1" not in out, out
    assert f"kill: ({host_pid}) - No such process" in out and "KILLED-HOST" not in out, out
    assert "Permission denied" in out and "WROTE" not in out and guard.read_text() == "untouched\n", out
    procs = int(out.rsplit("procs=", 1)[1].split()[0])
    assert procs < 10, f"exec sees {procs} processes: not in kwok's PID namespace\n{out}"


def _fluid_object(kind: str, spec: dict) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "smoke"}, "spec": spec}


def _read(co: client.CustomObjectsApi, ns: str, plural: str) -> dict | None:
    """The custom object ``smoke`` of ``plural`` in ``ns``, or None when it does not exist."""
    try:
        return co.get_namespaced_custom_object(GROUP, VERSION, ns, plural, "smoke")
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _assert_workers_on_kwok_nodes(core: client.CoreV1Api, ns: str, nodes: list[str]) -> set[str]:
    """Two Running workers on two of our kwok nodes, each with its node's IP (hostNetwork: the pod IP is what
    Fluid passes vineyardd as MY_HOST_NAME); returns their node names."""
    workers = core.list_namespaced_pod(ns, label_selector="release=smoke,role=vineyard-worker").items
    assert len(workers) == 2 and all(p.status.phase == "Running" for p in workers)
    worker_nodes = {p.spec.node_name for p in workers}
    assert worker_nodes <= set(nodes) and len(worker_nodes) == 2
    for worker in workers:
        node = core.read_node(worker.spec.node_name)
        internal = [a.address for a in node.status.addresses if a.type == "InternalIP"]
        assert worker.spec.host_network and [worker.status.pod_ip] == internal, (
            worker.status.pod_ip,
            internal,
        )
    return worker_nodes


def test_fluid_controllers_bind_a_vineyard_dataset(control_plane: ControlPlane, nodes: list[str]):  # noqa: F811
    """Fluid's own controllers bind a Dataset + VineyardRuntime: phase Bound, workers Ready on kwok nodes, PVC
    created, cache-node labels set; deleting them removes the PVC and the labels."""
    ns = _namespace(control_plane, "cp-fluid")
    api = control_plane.api_client()
    co, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    co.create_namespaced_custom_object(
        GROUP, VERSION, ns, "datasets", _fluid_object("Dataset", {"accessModes": ["ReadWriteMany"]})
    )
    levels = [{"mediumtype": "MEM", "quota": "1Gi"}]
    runtime_spec = {"replicas": 2, "tieredstore": {"levels": levels}}
    co.create_namespaced_custom_object(
        GROUP, VERSION, ns, "vineyardruntimes", _fluid_object("VineyardRuntime", runtime_spec)
    )
    phase = lambda: (_read(co, ns, "datasets") or {}).get("status", {}).get("phase")  # noqa: E731
    wait_for("Dataset cp-fluid/smoke phase Bound", lambda: phase() == "Bound", 300, control_plane)
    runtime = _read(co, ns, "vineyardruntimes")
    assert runtime["status"]["workerNumberReady"] == 2, runtime["status"]
    worker_nodes = _assert_workers_on_kwok_nodes(core, ns, nodes)
    # Fluid sets Bound in Setup, then creates PV/PVC (runtime_controller.go reconcileRuntime step 2,
    # CreateVolume) and labels nodes in Sync (step 3): both may trail Bound.
    read_pvc = lambda: core.read_namespaced_persistent_volume_claim("smoke", ns)  # noqa: E731
    pvc = wait_for(
        "PVC cp-fluid/smoke created by Fluid", lambda: _exists(read_pvc) and read_pvc(), 30, control_plane
    )
    label = "fluid.io/s-cp-fluid-smoke"
    assert label in (pvc.metadata.labels or {}), pvc.metadata.labels
    labelled = lambda: {n.metadata.name for n in core.list_node(label_selector=f"{label}=true").items}  # noqa: E731
    wait_for(
        f"nodes {sorted(worker_nodes)} labelled {label}",
        lambda: labelled() == worker_nodes,
        60,
        control_plane,
    )

    co.delete_namespaced_custom_object(GROUP, VERSION, ns, "vineyardruntimes", "smoke")
    wait_for("VineyardRuntime deleted", lambda: _read(co, ns, "vineyardruntimes") is None, 120, control_plane)
    co.delete_namespaced_custom_object(GROUP, VERSION, ns, "datasets", "smoke")
    wait_for("Dataset deleted", lambda: _read(co, ns, "datasets") is None, 120, control_plane)
    wait_for("PVC smoke deleted", lambda: not _exists(read_pvc), 60, control_plane)
    assert core.list_node(label_selector=label).items == []


@pytest.mark.parametrize("exit_code, phase", [("0", "Succeeded"), ("3", "Failed")])
def test_kwok_completes_kpo_pods(control_plane: ControlPlane, nodes: list[str], exit_code: str, phase: str):  # noqa: F811
    """Our kwok stages finish a KubernetesPodOperator pod in two steps: ``base`` terminates first (the xcom
    sidecar still runs and takes an exec), then the pod ends Succeeded or Failed by the exit code."""
    ns = f"cp-kpo-{exit_code}"
    _namespace(control_plane, ns)
    core = control_plane.core_v1()
    pod = _pod("task", labels={"kubernetes_pod_operator": "True"})
    pod.metadata.annotations = {
        "fluid-airflow.test/exit-code": exit_code,
        "fluid-airflow.test/run-for": "500ms",
        "fluid-airflow.test/finish-after": "4s",
    }
    pod.spec.containers.append(client.V1Container(name="airflow-xcom-sidecar", image="alpine"))
    core.create_namespaced_pod(ns, pod)

    def base_terminated() -> client.V1ContainerStateTerminated | None:
        got = core.read_namespaced_pod("task", ns)
        states = {c.name: c.state for c in got.status.container_statuses or []}
        base = states.get("base")
        return base.terminated if base and base.terminated and got.status.phase == "Running" else None

    terminated = wait_for("base container terminated while the pod runs", base_terminated, 30, control_plane)
    assert str(terminated.exit_code) == exit_code
    out = stream(
        core.connect_get_namespaced_pod_exec,
        "task",
        ns,
        container="airflow-xcom-sidecar",
        command=["/bin/echo", "sidecar-alive"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    assert out.strip() == "sidecar-alive"
    final = wait_for(
        f"pod phase {phase}",
        lambda: core.read_namespaced_pod("task", ns).status.phase == phase,
        30,
        control_plane,
    )
    assert final
    done = core.read_namespaced_pod("task", ns)
    assert all(c.state.terminated is not None for c in done.status.container_statuses)
