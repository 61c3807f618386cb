"""Issue 15 defects 1, 7, 8 and Build 5 on the real control plane: where the real kube-scheduler places
FluidPodOperator pods, next to a VineyardRuntime that Fluid v1.0.8's own controllers deployed.

Three kwok nodes of pool ``place``; each node's ``kubernetes.io/hostname`` label differs from its name (as on
clouds that register FQDN hostnames), so nothing may assume name == label. One vineyardd worker runs on the
pool (worker ``nodeSelector``); the Fluid master (etcd) runs on some node. Counting pods without requests as
100m CPU and 200Mi (kube-scheduler v1.36.3 ``pkg/scheduler/util/pod_resources.go``), resource scoring prefers
a node running neither, and one of the three always is: an unconstrained pod avoids the worker's node
(``test_without_affinity_the_scheduler_avoids_the_worker_node``), so a pod lands there only through affinity.
The worker's own memory request is dropped by Fluid's chart for this 32Gi quota (defect 7, tested below).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import NODE_CAPACITY, connected, make_namespace, read_fluid, wait_for
from kubernetes import client

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid import manifests
from fluid_airflow.hooks.fluid import FluidHook
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.pod import FluidPodOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator
from fluid_airflow.vineyard.data.reference import VineyardReference

CONN, NS, NAME = "fluid_k8s_place", "k8s-place", "place"
POOL = {"fluid-airflow.test/pool": "place"}
NODES = ("place-a", "place-b", "place-c")
CACHE_LABEL = f"fluid.io/s-{NS}-{NAME}"
RESERVE = {"vineyardd.reserve.memory": "false", "wait.etcd.timeout": "30"}  # not the chart defaults
COMPLETE = {"fluid-airflow.test/exit-code": "0", "fluid-airflow.test/run-for": "200ms",
            "fluid-airflow.test/finish-after": "200ms"}  # fmt: skip


@pytest.fixture(scope="module")
def cache(control_plane: ControlPlane) -> Iterator[SimpleNamespace]:  # noqa: F811
    """Dataset + one-worker VineyardRuntime bound by Fluid; yields the worker pod, its node and IP."""
    make_namespace(control_plane, NS)
    for name in NODES:
        labels = {**POOL, "kubernetes.io/hostname": f"{name}.hosts.example"}
        control_plane.create_node(name, labels, NODE_CAPACITY)
    core = control_plane.core_v1()
    with connected(CONN, control_plane.admin_kubeconfig, NS):
        FluidCreateDatasetOperator(task_id="create", dataset_name=NAME, fluid_conn_id=CONN).execute({})
        runtime = manifests.build_vineyard_runtime(
            NAME, NS, replicas=1, cache_capacity="32Gi", worker={"nodeSelector": POOL}
        )
        runtime["spec"]["worker"]["options"] = RESERVE  # what the bind operator now refuses (defect 7)
        client.CustomObjectsApi(control_plane.api_client()).create_namespaced_custom_object(
            manifests.GROUP, manifests.VERSION, NS, manifests.RUNTIME_PLURAL, runtime
        )
        FluidHook(CONN).wait_ready(NS, NAME, 240, 1)
        (worker,) = core.list_namespaced_pod(NS, label_selector=manifests.worker_selector(NAME)).items
        node = worker.spec.node_name
        wait_for(
            f"node {node} labelled {CACHE_LABEL} by Fluid",
            lambda: (
                [n.metadata.name for n in core.list_node(label_selector=f"{CACHE_LABEL}=true").items]
                == [node]
            ),
            60,
            control_plane,
        )
        yield SimpleNamespace(plane=control_plane, worker=worker, node=node, ip=worker.status.pod_ip)
        core.patch_node(node, {"spec": {"unschedulable": False}})
        FluidCleanupOperator(
            task_id="cleanup", dataset_name=NAME, fluid_conn_id=CONN, timeout=120, poll_interval=1
        ).execute({})


def _ref(host: str, size: int) -> dict[str, Any]:
    """A reference as the XCom backend records it: ``host`` is what vineyardd reports as its hostname."""
    return VineyardReference(
        object_id="o0001", name="airflow/d/r/up/-1/return_value", type="pandas.DataFrame", encoding="arrow",
        typename="vineyard::Table", bytes=size, dag_id="d", run_id="r", task_id="up", map_index=-1,
        key="return_value", host=host,
    ).to_json()  # fmt: skip


def _operator(plane: ControlPlane, task_id: str, **kw: Any) -> tuple[FluidPodOperator, dict[str, Any]]:
    """A FluidPodOperator on the pool (kwok completes its pod) and the context to execute it with."""
    from airflow.sdk import DAG

    with DAG(f"fa_place_{task_id}", schedule=None) as dag:
        op = FluidPodOperator(
            task_id=task_id, image="busybox", cmds=["true"], dataset_name=NAME, fluid_conn_id=CONN,
            config_file=str(plane.admin_kubeconfig), node_selector=POOL, annotations=COMPLETE,
            get_logs=False, log_events_on_startup=False, on_finish_action="keep_pod", **kw,
        )  # fmt: skip
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id=task_id, run_id="manual__place", map_index=-1,
                         try_number=1, xcom_push=lambda key, value: None)  # fmt: skip
    return op, {"ti": ti, "run_id": ti.run_id, "dag": dag}


def _run(plane: ControlPlane, task_id: str, **kw: Any) -> client.V1Pod:
    """Run a FluidPodOperator to the end and return the pod it created."""
    op, context = _operator(plane, task_id, **kw)
    with connected(CONN, plane.admin_kubeconfig, NS):
        op.execute(context)
    (pod,) = plane.core_v1().list_namespaced_pod(NS, label_selector=f"task_id={task_id}").items
    return pod


@contextlib.contextmanager
def _cordoned(cache: SimpleNamespace) -> Iterator[None]:
    core = cache.plane.core_v1()
    core.patch_node(cache.node, {"spec": {"unschedulable": True}})
    try:
        yield
    finally:
        core.patch_node(cache.node, {"spec": {"unschedulable": False}})


def _assert_names_the_affinity(message: str) -> None:
    assert "data affinity is 'required'" in message, message
    assert f"{CACHE_LABEL} In ['true']" in message, message
    assert "Unschedulable" in message and "unschedulable" in message.split("Unschedulable", 1)[1], message


def test_worker_pod_ip_is_what_vineyardd_reports_and_no_node_label(cache: SimpleNamespace):
    """The precondition of defect 1, on Fluid's own StatefulSet: ``MY_HOST_NAME`` is the pod IP, which is
    neither a node name nor any node's ``kubernetes.io/hostname``."""
    env = {e.name: e.value_from.field_ref.field_path for e in cache.worker.spec.containers[0].env
           if e.value_from and e.value_from.field_ref}  # fmt: skip
    assert env["MY_HOST_NAME"] == "status.podIP"
    hostnames = {n.metadata.labels["kubernetes.io/hostname"] for n in cache.plane.core_v1().list_node().items}
    assert cache.ip and cache.ip not in hostnames and cache.ip not in NODES


def test_object_affinity_places_the_consumer_on_the_node_holding_the_bytes(cache: SimpleNamespace):
    """Defect 1: a reference stored by the worker's vineyardd (host = its pod IP) steers the pod to that
    worker's node, by node name, although no label carries the IP and the hostname label is not the name."""
    pod = _run(cache.plane, "consume", data_affinity="none", input_refs=[_ref(cache.ip, 300_000_000)])
    preferred = pod.spec.affinity.node_affinity.preferred_during_scheduling_ignored_during_execution
    assert [(t.weight, t.preference.match_fields[0].key, t.preference.match_fields[0].values)
            for t in preferred] == [(100, "metadata.name", [cache.node])]  # fmt: skip
    assert pod.spec.node_name == cache.node


def test_without_affinity_the_scheduler_avoids_the_worker_node(cache: SimpleNamespace):
    """The control for the two placement tests: the worker's memory request alone sends a pod elsewhere."""
    pod = _run(cache.plane, "anywhere", data_affinity="none")
    assert pod.spec.node_name in NODES and pod.spec.node_name != cache.node


def test_preferred_data_affinity_lands_on_the_cache_node(cache: SimpleNamespace):
    """Build 5: of three nodes, the one Fluid labelled as the Dataset's cache node takes a preferred pod."""
    pod = _run(cache.plane, "preferred", data_affinity="preferred")
    assert pod.spec.node_name == cache.node


def test_required_data_affinity_with_the_cache_node_cordoned_fails_naming_it(cache: SimpleNamespace):
    """Build 5: with the cache node cordoned a ``required`` pod stays Pending, and the task fails after
    ``schedule_timeout_seconds`` with a message that names the affinity and the scheduler's reason."""
    with _cordoned(cache):
        started = time.monotonic()
        with pytest.raises(errors.FluidSchedulingError) as failed:
            _run(cache.plane, "required", data_affinity="required", schedule_timeout_seconds=5,
                 startup_timeout_seconds=5)  # fmt: skip
        assert time.monotonic() - started < 60
        # While still cordoned: once the node is schedulable again the scheduler binds the pod there.
        (pod,) = cache.plane.core_v1().list_namespaced_pod(NS, label_selector="task_id=required").items
        assert pod.status.phase == "Pending" and pod.spec.node_name is None
    _assert_names_the_affinity(str(failed.value))


def test_deferrable_required_data_affinity_fails_naming_it_too(cache: SimpleNamespace):
    """Build 5 in deferrable mode: the trigger reports the pod Pending past ``schedule_timeout_seconds`` as a
    ``timeout`` event, and the resumed task fails with the same message as the sync path."""
    op, context = _operator(cache.plane, "required-deferred", data_affinity="required", deferrable=True,
                            schedule_timeout_seconds=5, startup_timeout_seconds=5)  # fmt: skip
    with _cordoned(cache), connected(CONN, cache.plane.admin_kubeconfig, NS):
        with pytest.raises(TaskDeferred) as deferred:
            op.execute(context)
        event = asyncio.run(_first_event(deferred.value.trigger))
        assert event["status"] == "timeout", event
        with pytest.raises(errors.FluidSchedulingError) as failed:
            getattr(op, deferred.value.method_name)(context, event)
    _assert_names_the_affinity(str(failed.value))


async def _first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def test_worker_and_fuse_images_match_the_client(cache: SimpleNamespace):
    """Defect 8: Fluid renders the images we set (its default is v0.22.2) into the worker StatefulSet and
    the fuse DaemonSet; the tag is the installed vineyard client's version."""
    version = importlib.metadata.version("vineyard")
    apps = client.AppsV1Api(cache.plane.api_client())
    worker = apps.read_namespaced_stateful_set(f"{NAME}-worker", NS).spec.template.spec.containers[0]
    fuse = apps.read_namespaced_daemon_set(f"{NAME}-fuse", NS).spec.template.spec.containers[0]
    assert worker.image == f"ghcr.io/v6d-io/v6d/vineyardd:alpine-v{version}"
    assert fuse.image == f"ghcr.io/v6d-io/v6d/vineyard-fluid-fuse:v{version}"


def test_fluid_ignores_worker_options_so_bind_refuses_them(cache: SimpleNamespace):
    """Defect 7: the runtime Fluid deployed asks (``worker.options``) for no reserved memory and a 30 s etcd
    wait, yet the worker runs with the chart's defaults (``--reserve_memory``, ``--meta_timeout 120``); so the
    bind operator refuses master and worker options before any request, naming the field."""
    spec = read_fluid(cache.plane, NS, manifests.RUNTIME_PLURAL, NAME)["spec"]
    assert spec["worker"]["options"] == RESERVE
    apps = client.AppsV1Api(cache.plane.api_client())
    command = apps.read_namespaced_stateful_set(f"{NAME}-worker", NS).spec.template.spec.containers[0].command
    assert "--reserve_memory" in command, command
    assert command[command.index("--meta_timeout") + 1] == "120", command
    with connected(CONN, cache.plane.admin_kubeconfig, NS):
        for field in ("worker", "master"):
            op = FluidBindVineyardRuntimeOperator(
                task_id=f"bind_{field}",
                dataset_name="opts",
                fluid_conn_id=CONN,
                **{field: {"options": RESERVE}},
            )
            with pytest.raises(errors.FluidSpecError, match=rf"{field}\.options .* would have no effect"):
                op.execute({})
    co = client.CustomObjectsApi(cache.plane.api_client())
    left = co.list_namespaced_custom_object(manifests.GROUP, manifests.VERSION, NS, manifests.RUNTIME_PLURAL)
    assert [o["metadata"]["name"] for o in left["items"]] == [NAME]  # nothing created


def test_fluid_drops_the_worker_memory_request_so_bind_refuses_worker_memory(cache: SimpleNamespace):
    """Defect 7, the chart's string comparison: Fluid wrote quota + 500Mi (33268Mi) into the runtime as the
    worker's memory request, yet the StatefulSet it rendered has no memory request or limit ("33268Mi" does
    not sort before "32Gi"); so the bind operator refuses a worker memory value before any request."""
    spec = read_fluid(cache.plane, NS, manifests.RUNTIME_PLURAL, NAME)["spec"]
    assert spec["worker"]["resources"]["requests"]["memory"] == "33268Mi", spec["worker"]
    apps = client.AppsV1Api(cache.plane.api_client())
    container = apps.read_namespaced_stateful_set(f"{NAME}-worker", NS).spec.template.spec.containers[0]
    resources = container.resources
    assert "memory" not in (resources.requests or {}) and "memory" not in (resources.limits or {}), resources
    with connected(CONN, cache.plane.admin_kubeconfig, NS):
        op = FluidBindVineyardRuntimeOperator(
            task_id="bind_memory", dataset_name="memory", fluid_conn_id=CONN, cache_capacity="4Gi",
            worker={"resources": {"requests": {"memory": "6Gi"}}},
        )  # fmt: skip
        with pytest.raises(errors.FluidSpecError, match=r"requests\.memory '6Gi' .*string comparison"):
            op.execute({})
    co = client.CustomObjectsApi(cache.plane.api_client())
    left = co.list_namespaced_custom_object(manifests.GROUP, manifests.VERSION, NS, manifests.RUNTIME_PLURAL)
    assert [o["metadata"]["name"] for o in left["items"]] == [NAME]  # nothing created
