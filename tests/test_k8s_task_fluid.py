"""``@task.fluid`` on the real control plane, sync and deferrable (defect 4 of issue 15).

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
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk.exceptions import TaskDeferred
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from controlplane.kwok_config import ANNOTATION_RUN_FOR
from k8s_plane import NODE_CAPACITY, connected, make_namespace, wait_for

from fluid_airflow.decorators.fluid import SPEC_ENV
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator
from fluid_airflow.runner import task as runner

CONN, NS, NAME = "fluid_k8s_task", "k8s-task", "task-data"
EXPECTED = {"total": 6, "pair": (1, 2), "label": "done"}  # a tuple: serde-encoded by the runner


@pytest.fixture(scope="module")
def bound(control_plane: ControlPlane) -> Iterator[ControlPlane]:  # noqa: F811
    """Dataset + VineyardRuntime bound by Fluid on one kwok node; cleaned up at the end."""
    make_namespace(control_plane, NS)
    control_plane.create_node("task-node", {"fluid-airflow.test/pool": "task"}, NODE_CAPACITY)
    with connected(CONN, control_plane.admin_kubeconfig, NS):
        FluidCreateDatasetOperator(
            task_id="create", dataset_name=NAME, placement="", fluid_conn_id=CONN
        ).execute({})
        FluidBindVineyardRuntimeOperator(
            task_id="bind", dataset_name=NAME, fluid_conn_id=CONN, replicas=1, cache_capacity="1Gi",
            network_mode="", timeout=240, poll_interval=1,
        ).execute({})  # fmt: skip
        core = control_plane.core_v1()
        wait_for("PVC created by Fluid", lambda: _pvc_exists(core), 60, control_plane)
        yield control_plane
        FluidCleanupOperator(
            task_id="cleanup", dataset_name=NAME, fluid_conn_id=CONN, timeout=120, poll_interval=1
        ).execute({})


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
