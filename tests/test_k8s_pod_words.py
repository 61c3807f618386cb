"""Defect 11 of issue 15 (wrong words), the parts about FluidPodOperator.

- A missing PVC: the pod does not wait in Pending indefinitely; the real kube-scheduler cannot place it and
  KubernetesPodOperator fails the task after ``schedule_timeout_seconds`` (cncf-kubernetes 10.25
  ``utils/pod_manager.py`` ``await_pod_start`` raises PodLaunchTimeoutException, which KPO reports as "Pod
  ... returned a failure" with the scheduler's reason). Our warning says so.
- ``durable=False`` is our default only when the user asks for neither ``durable`` nor the deprecated
  ``reattach_on_restart`` (KPO lets ``durable`` win over ``reattach_on_restart``: operators/pod.py
  ``__init__``).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from airflow.exceptions import AirflowProviderDeprecationWarning
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import NODE_CAPACITY, connected, make_namespace, wait_for
from structlog.testing import capture_logs

from fluid_airflow.operators.pod import FluidPodOperator

CONN, NS = "fluid_k8s_words", "k8s-words"


def _op(**kw) -> FluidPodOperator:
    args = {"task_id": "train", "image": "busybox", "cmds": ["true"], "dataset_name": "nopvc"}
    return FluidPodOperator(**{**args, "fluid_conn_id": CONN, **kw})


def test_missing_pvc_fails_after_the_schedule_timeout(control_plane: ControlPlane):  # noqa: F811
    from airflow.sdk import DAG

    make_namespace(control_plane, NS)
    control_plane.create_node("words-node", {"fluid-airflow.test/pool": "words"}, NODE_CAPACITY)
    with DAG("fa_k8s_words", schedule=None) as dag:
        op = _op(config_file=str(control_plane.admin_kubeconfig), schedule_timeout_seconds=5,
                 startup_timeout_seconds=5, get_logs=False, log_events_on_startup=False,
                 on_finish_action="keep_pod")  # fmt: skip
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id=op.task_id, run_id="manual__words", map_index=-1,
                         try_number=1, xcom_push=lambda key, value: None)  # fmt: skip
    with (
        connected(CONN, control_plane.admin_kubeconfig, NS),
        capture_logs() as logs,
        pytest.raises(Exception, match="returned a failure") as failed,
    ):
        started = time.monotonic()
        op.execute({"ti": ti, "run_id": ti.run_id, "dag": dag})
    assert time.monotonic() - started < 60
    assert "'phase': 'Pending'" in str(failed.value)
    (pod,) = control_plane.core_v1().list_namespaced_pod(NS, label_selector="task_id=train").items
    wait_for(
        "the scheduler's reason for not placing the pod",
        lambda: (
            'persistentvolumeclaim "nopvc" not found'
            in str(control_plane.core_v1().read_namespaced_pod(pod.metadata.name, NS).status.conditions)
        ),
        60,
        control_plane,
    )
    warnings = [e["event"] for e in logs if e.get("log_level") == "warning" and "PVC" in str(e["event"])]
    assert any("fails the task after schedule_timeout_seconds (5 s)" in w for w in warnings), (warnings, logs)
    assert not any("waits in Pending" in w for w in warnings)


@pytest.mark.parametrize(
    "kwargs, reattach",
    [
        ({}, False),
        ({"reattach_on_restart": True}, True),
        ({"durable": True}, True),
        ({"durable": False}, False),
    ],
)
def test_reattaching_is_off_unless_asked_for(kwargs: dict, reattach: bool):
    if "reattach_on_restart" in kwargs:
        # Honoured, and the user sees cncf-kubernetes' own deprecation of it (10.25 operators/pod.py).
        with pytest.warns(AirflowProviderDeprecationWarning, match="Use `durable` instead"):
            op = _op(**kwargs)
    else:
        op = _op(**kwargs)
    assert op.reattach_on_restart is reattach
