"""``@task.fluid`` on the real control plane, sync and deferrable (defect 4 of issue 15); off the cache nodes
over RPC with the first worker down (defect 9), and with ``do_xcom_push=False`` (defect 10).

A Dataset is bound by Fluid's own controllers; the task pod is created by KubernetesPodOperator, placed by the
real kube-scheduler on a kwok node (it mounts the Dataset's PVC) and completed by our kwok stages
(``tests/controlplane/kwok_config.py``). kwok runs no container, so the test plays the pod's ``base``
container: it runs the runner (:mod:`fluid_airflow.runner.task`) with the spec the pod carries, against
the session's real vineyardd, and writes its output where KPO's sidecar exec reads it. That exec really goes
through the API server to kwok, which runs it on this host (docs/controlplane.md), so the sidecar's folder is
pointed at a host folder: ``PodDefaults.XCOM_MOUNT_PATH``, which cncf-kubernetes 10.25
``utils/pod_manager.py`` ``extract_xcom_json`` reads when it builds the ``cat`` command.

Deferrable: ``execute`` defers to KPO's ``KubernetesPodTrigger``, which this test runs (its
``kubernetes_asyncio`` client talks to the real API server), then resumes in ``trigger_reentry``, as the
triggerer and a worker would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk.exceptions import TaskDeferred
from conftest import held_in
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from controlplane.kwok_config import ANNOTATION_RUN_FOR
from k8s_plane import NODE_CAPACITY, connected, create_and_bind, make_namespace, wait_for
from k8s_task_play import (
    cluster_dns,
    finish_container,
    play_fuse,
    play_task_container,
    rpc_conf,
    task_pod,
    tcp_relay,
)

from fluid_airflow.decorators.fluid import SPEC_ENV
from fluid_airflow.fluid import manifests
from fluid_airflow.hooks.vineyard import VineyardHook, close_clients
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.runner import task as runner
from fluid_airflow.vineyard.data.reference import is_reference
from fluid_airflow.vineyard.xcom import VineyardXComBackend, use_client

CONN, NS, NAME = "fluid_k8s_task", "k8s-task", "task-data"
POOL, OFF_POOL = {"fluid-airflow.test/pool": "task"}, {"fluid-airflow.test/pool": "task-off"}
CACHE_NODES, OFF_NODE = ("task-node-a", "task-node-b"), "task-off"
EXPECTED = {"total": 6, "pair": (1, 2), "label": "done"}  # a tuple: serde-encoded by the runner


@pytest.fixture(scope="module")
def bound(control_plane: ControlPlane) -> Iterator[ControlPlane]:  # noqa: F811
    """Dataset + two-worker VineyardRuntime bound by Fluid on the two nodes of pool ``task`` (the cache
    nodes), and a node of another pool, ``task-off``, that runs no worker; cleaned up at the end."""
    make_namespace(control_plane, NS)
    for node in CACHE_NODES:
        control_plane.create_node(node, POOL, NODE_CAPACITY)
    control_plane.create_node(OFF_NODE, OFF_POOL, NODE_CAPACITY)
    with connected(CONN, control_plane.admin_kubeconfig, NS):
        create_and_bind(CONN, NAME, POOL)
        core = control_plane.core_v1()
        wait_for("PVC created by Fluid", lambda: _pvc_exists(core), 60, control_plane)
        labelled = lambda: set(_cache_nodes(core)) == set(CACHE_NODES)  # noqa: E731
        wait_for("both cache nodes labelled by Fluid", labelled, 60, control_plane)
        yield control_plane
        FluidCleanupOperator(
            task_id="cleanup", dataset_name=NAME, fluid_conn_id=CONN, timeout=120, poll_interval=1
        ).execute({})


def _cache_nodes(core: Any) -> list[str]:
    key = manifests.cache_node_label_key(NS, NAME)
    return [n.metadata.name for n in core.list_node(label_selector=f"{key}=true").items]


def _pvc_exists(core: Any) -> bool:
    return any(p.metadata.name == NAME for p in core.list_namespaced_persistent_volume_claim(NS).items)


def _operator(plane: ControlPlane, dag_id: str, deferrable: bool) -> Any:
    from airflow.sdk import DAG, task

    with DAG(dag_id, schedule=None) as dag:

        @task.fluid(
            dataset_name=NAME,
            image="fluid-airflow:test",
            fluid_conn_id=CONN,
            deferrable=deferrable,
            config_file=str(plane.admin_kubeconfig),
            get_logs=False,
            poll_interval=1,
            annotations={ANNOTATION_RUN_FOR: "20s"},
        )  # time for the test to play the container
        def summarise():
            return {"total": 6, "pair": (1, 2), "label": "done"}

        op = summarise().operator
    return op, dag


def _context(op: Any, dag: Any) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id=op.task_id, run_id=f"manual__{dag.dag_id}", map_index=-1,
                         try_number=1, xcom_push=lambda key, value: None)  # fmt: skip
    return {"ti": ti, "run_id": ti.run_id, "dag": dag}


@pytest.fixture
def xcom_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The host folder the sidecar exec reads: kwok execs as uid 65534, which cannot enter pytest's
    ``tmp_path`` (its root is private), so a world-readable folder of its own, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fa-xcom-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        monkeypatch.setattr(PodDefaults, "XCOM_MOUNT_PATH", str(folder))
        yield folder


def _play_base_container(plane: ControlPlane, task_id: str, xcom_dir: Path, vineyardd: Any) -> None:
    """What the pod's ``base`` container does: run the runner with the pod's own spec and arguments."""
    core = plane.core_v1()
    pods = lambda: core.list_namespaced_pod(NS, label_selector=f"task_id={task_id}").items  # noqa: E731
    (pod,) = wait_for(f"the pod of {task_id}", pods, 30, plane)
    base = next(c for c in pod.spec.containers if c.name == "base")
    assert base.args == ["--output", "/airflow/xcom/return.json"], base.args
    encoded = next(e.value for e in base.env if e.name == SPEC_ENV)
    spec = json.loads(base64.b64decode(encoded))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINEYARD_IPC_SOCKET", str(vineyardd.socket_path))
        assert runner.execute(spec, xcom_dir / "return.json") == 0
    (xcom_dir / "return.json").chmod(0o644)
    written = json.loads((xcom_dir / "return.json").read_text())
    assert written["pair"] != [1, 2], written  # serde-encoded: the operator must decode it


def test_sync_task_returns_the_functions_value(bound: ControlPlane, xcom_dir: Path, vineyardd):
    op, dag = _operator(bound, "fa_k8s_task_sync", deferrable=False)
    context = _context(op, dag)
    player = threading.Thread(target=_play_base_container, args=(bound, op.task_id, xcom_dir, vineyardd))
    with connected(CONN, bound.admin_kubeconfig, NS):
        player.start()  # the sync path blocks in execute until the pod completes
        try:
            result = op.execute(context)
        finally:
            player.join(60)
    assert result == EXPECTED


def test_deferrable_task_returns_what_the_sync_path_returns(bound: ControlPlane, xcom_dir: Path, vineyardd):
    op, dag = _operator(bound, "fa_k8s_task_deferred", deferrable=True)
    context = _context(op, dag)
    with connected(CONN, bound.admin_kubeconfig, NS):
        with pytest.raises(TaskDeferred) as deferred:
            op.execute(context)
        _play_base_container(bound, op.task_id, xcom_dir, vineyardd)
        event = asyncio.run(_first_event(deferred.value.trigger))
        assert event["status"] == "success", event
        result = getattr(op, deferred.value.method_name)(context, event)
    assert result == EXPECTED


async def _first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def test_on_kill_deletes_the_running_pod(bound: ControlPlane):
    """Killing the task deletes its pod (KPO's ``on_kill``), which kwok keeps Running until then; the
    monitoring loop ends because the pod is gone. (That the container dies with its pod is the kubelet's
    part: tests/test_fluid_pods_e2e.py runs it with the kubelet double.)"""
    from airflow.sdk import DAG, task

    with DAG("fa_k8s_task_kill", schedule=None) as dag:

        @task.fluid(dataset_name=NAME, image="fluid-airflow:test", fluid_conn_id=CONN, get_logs=False,
                    config_file=str(bound.admin_kubeconfig),
                    annotations={ANNOTATION_RUN_FOR: "1h"})  # fmt: skip
        def sleeper():
            import time

            time.sleep(3600)

        op = sleeper().operator
    context = _context(op, dag)
    outcome: list[BaseException | None] = []

    def execute() -> None:
        try:
            op.execute(context)
            outcome.append(None)
        except BaseException as exc:  # what ends the monitoring loop
            outcome.append(exc)

    core = bound.core_v1()
    worker = threading.Thread(target=execute)
    with connected(CONN, bound.admin_kubeconfig, NS):
        worker.start()
        pods = lambda: core.list_namespaced_pod(NS, label_selector=f"task_id={op.task_id}").items  # noqa: E731
        running = lambda: [p for p in pods() if p.status.phase == "Running" and p.spec.node_name]  # noqa: E731
        (pod,) = wait_for("the sleeper's pod Running on a kwok node", running, 60, bound)
        wait_for("the operator holding its pod", lambda: op.pod is not None, 30, bound)
        assert op.pod.metadata.name == pod.metadata.name
        op.on_kill()
        worker.join(60)
    assert not worker.is_alive()
    wait_for("the pod deleted", lambda: not pods(), 30, bound)
    assert outcome and outcome[0] is not None, outcome


# -- defects 9 and 10: the task pod's container played from the pod itself (tests/k8s_task_play.py) --------


def _producer(plane: ControlPlane, dag_id: str, **options: Any) -> tuple[Any, Any]:
    """An ``@task.fluid`` task returning a 512 KiB array (above the default inline floor, so it goes to
    Vineyard); kwok keeps its pod running until the play ends."""
    from airflow.sdk import DAG, task

    with DAG(dag_id, schedule=None) as dag:

        @task.fluid(dataset_name=NAME, image="fluid-airflow:test", fluid_conn_id=CONN, get_logs=False,
                    config_file=str(plane.admin_kubeconfig), poll_interval=1,
                    annotations={ANNOTATION_RUN_FOR: "120s"}, **options)  # fmt: skip
        def produce():
            import numpy as np

            return np.arange(1 << 16, dtype="float64")

        op = produce().operator
    return op, dag


def _execute_while_playing(plane: ControlPlane, op: Any, dag: Any, play: Any) -> tuple[Any, list[Any]]:
    """``op.execute`` (sync: it blocks until the pod completes) while ``play(pod)`` plays its container in a
    thread; returns the task's value and ``[pod, exit code]`` of the play (re-raised if the play failed)."""
    played: list[Any] = []

    def player() -> None:
        pod = None
        try:
            pod = task_pod(plane, NS, op.task_id)
            played.extend((pod, play(pod)))
        except BaseException as exc:
            played.append(exc)
            if pod is not None:  # the task fails now rather than when kwok's run-for ends
                finish_container(plane, pod, 1)

    thread = threading.Thread(target=player)
    with connected(CONN, plane.admin_kubeconfig, NS):
        thread.start()
        try:
            result = op.execute(_context(op, dag))
        finally:
            thread.join(90)
    if played and isinstance(played[-1], BaseException):
        raise played[-1]
    return result, played


def _worker_nodes(core: Any) -> dict[str, str]:
    """``{node: worker pod}`` of the runtime's workers."""
    pods = core.list_namespaced_pod(NS, label_selector=manifests.worker_selector(NAME)).items
    return {p.spec.node_name: p.metadata.name for p in pods}


def test_off_cache_task_uses_the_next_rpc_endpoint_when_the_first_worker_is_down(
    bound: ControlPlane, xcom_dir: Path, rpc_vineyardd: Any, tmp_path: Path
):
    """Issue 15 defect 9: a task pod off the cache nodes reaches vineyardd over RPC, trying every endpoint of
    the Vineyard config in order, as vineyard's client does; here the first worker is down.

    Real: the Dataset and its two workers (Fluid's controllers), the endpoint list (ConfigMap
    ``task-data-rpc-conf``, made by Fluid's chart from the runtime), the pod (KPO, our builders) and its node
    (the real kube-scheduler, told by ``node_selector`` to use the pool without a worker), vineyardd.
    Played (kwok runs no container; tests/k8s_task_play.py): the fuse on that node, which writes the
    endpoints and links no socket there; cluster DNS, which turns each endpoint's name into its worker pod's
    IP; worker 1's network: its RPC port on its pod IP is relayed to the real vineyardd, while nothing
    listens on worker 0's (down); and the ``base`` container, which runs the runner with the pod's command,
    arguments and environment. The runner's exit code becomes the container's.
    """
    core = bound.core_v1()
    endpoints = [cluster_dns(core, e) for e in rpc_conf(core, NS, NAME)]
    workers = _worker_nodes(core)
    assert len(endpoints) == 2 and len(workers) == 2, (endpoints, workers)
    first, second = endpoints
    with pytest.raises(ConnectionRefusedError):  # worker 0 is down: nothing answers at its endpoint
        socket.create_connection(_host_port(first), timeout=5).close()
    pvc, rootfs = tmp_path / "pvc", tmp_path / "rootfs"
    pvc.mkdir(), rootfs.mkdir()

    def play(pod: Any) -> int:
        assert pod.spec.node_name == OFF_NODE and OFF_NODE not in workers, pod.spec.node_name
        play_fuse(pvc, endpoints, worker_socket=None)  # no worker on this node: no socket to link
        return play_task_container(bound, pod, {NAME: pvc, "xcom": xcom_dir}, rootfs)

    op, dag = _producer(bound, "fa_k8s_task_rpc", node_selector=OFF_POOL)
    with tcp_relay(_host_port(second), ("127.0.0.1", rpc_vineyardd.port)):
        result, (pod, code) = _execute_while_playing(bound, op, dag, play)
    assert code == 0
    base = next(c for c in pod.spec.containers if c.name == "base")
    assert {"name": "VINEYARD_CONFIG", "value": "/var/run/vineyard/vineyard-config.yaml"} in [
        {"name": e.name, "value": e.value} for e in base.env
    ]
    assert is_reference(result), result  # stored by the vineyardd behind the second endpoint
    client = VineyardHook(ipc_socket=str(rpc_vineyardd.socket_path)).get_conn()
    try:
        with use_client(client):
            value = VineyardXComBackend.deserialize_value(SimpleNamespace(value=result))
        assert value.shape == (1 << 16,) and value.tolist() == list(range(1 << 16))
    finally:
        close_clients(str(rpc_vineyardd.socket_path))  # or its stop waits for SIGKILL


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def test_task_without_xcom_push_runs_without_output_and_stores_nothing(
    bound: ControlPlane, vineyardd: Any, tmp_path: Path
):
    """Issue 15 defect 10: with ``do_xcom_push=False`` KPO adds no XCom sidecar nor ``/airflow/xcom`` volume
    (cncf-kubernetes 10.25 ``operators/pod.py`` ``build_pod_request_obj``), so the runner gets no
    ``--output``: it runs the function, stores nothing and writes no file; the task returns None.

    Real: the Dataset and workers (Fluid), the pod (KPO, our builders; ``data_affinity="required"``) and its
    cache node (the real kube-scheduler), vineyardd. Played (kwok runs no container; tests/k8s_task_play.py):
    the fuse on that node, which hard-links the node's worker socket (the session's vineyardd plays that
    worker), and the ``base`` container, which runs the runner with the pod's command, arguments and
    environment; a path outside the pod's volumes lands in a folder standing for the image's filesystem.
    """
    workers = _worker_nodes(bound.core_v1())
    pvc, rootfs = tmp_path / "pvc", tmp_path / "rootfs"
    pvc.mkdir(), rootfs.mkdir()

    def play(pod: Any) -> int:
        assert pod.spec.node_name in workers, (pod.spec.node_name, workers)
        play_fuse(pvc, [], worker_socket=vineyardd.socket_path)
        return play_task_container(bound, pod, {NAME: pvc}, rootfs)

    op, dag = _producer(bound, "fa_k8s_task_nopush", do_xcom_push=False, data_affinity="required")
    before = held_in(vineyardd)
    result, (pod, code) = _execute_while_playing(bound, op, dag, play)
    assert result is None
    assert [c.name for c in pod.spec.containers] == ["base"]
    base = pod.spec.containers[0]
    assert "--output" not in (base.args or []), base.args
    assert code == 0
    assert held_in(vineyardd) == before  # the 512 KiB array was not stored
    assert not (rootfs / "airflow").exists()  # nor /airflow/xcom/return.json written
