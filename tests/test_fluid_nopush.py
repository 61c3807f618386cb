"""Defect 10 of issue 15: ``do_xcom_push=False`` must not break the ``@task.fluid`` runner.

Without ``do_xcom_push`` KPO adds no XCom sidecar and no ``/airflow/xcom`` volume (cncf-kubernetes 10.25
``operators/pod.py`` ``build_pod_request_obj``), so the runner must not be told to write
``/airflow/xcom/return.json`` there (a non-root image cannot create it), and it must not store a result no
XCom row will reference. Runs on the API + kubelet doubles of ``tests/test_fluid_pods_e2e.py`` (the runner
really runs, as a local process); no cluster behaviour is involved.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from airflow.sdk.serde import serialize
from k8s_double import kube_double, kube_double_config  # noqa: F401 - fixtures of the doubles
from test_fluid_pods_e2e import CONN, DATASET, KUBE_CONN, cluster  # noqa: F401 - the doubles' fixture

from fluid_airflow.decorators import runner
from fluid_airflow.hooks.vineyard import VineyardHook

PRODUCE = "def produce():\n    import numpy as np\n    return np.ones(1 << 20)\n"


def _usage(socket: str) -> int:
    return int(VineyardHook(ipc_socket=socket).get_conn().status.memory_usage)


def test_runner_without_output_runs_the_function_and_stores_nothing(vineyardd, tmp_path, monkeypatch):
    monkeypatch.setenv("VINEYARD_IPC_SOCKET", str(vineyardd.socket_path))
    spec = {
        "function": "produce",
        "source": PRODUCE + "open('ran', 'w').write('yes')\n",
        "inputs": serialize({"args": [], "kwargs": {}}),
        "scope": {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.chdir(tmp_path)
    before = _usage(str(vineyardd.socket_path))
    assert runner.main(["--spec", str(tmp_path / "spec.json")]) == 0
    assert (tmp_path / "ran").read_text() == "yes"
    assert _usage(str(vineyardd.socket_path)) == before  # the 8 MiB result was not stored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ran", "spec.json"]


def test_fluid_task_pod_without_xcom_push(cluster):  # noqa: F811
    """The task pod gets no ``--output`` and no sidecar, its runner exits 0, nothing is stored, and the task
    returns None."""
    from airflow.sdk import DAG, task

    from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
    from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

    FluidCreateDatasetOperator(task_id="c", dataset_name=DATASET, fluid_conn_id=CONN).execute({})
    FluidBindVineyardRuntimeOperator(task_id="b", dataset_name=DATASET, fluid_conn_id=CONN).execute({})
    with DAG("fa_fluid_nopush", schedule=None) as dag:

        @task.fluid(dataset_name=DATASET, image="fluid-airflow:e2e", fluid_conn_id=CONN,
                    kubernetes_conn_id=KUBE_CONN, get_logs=False, do_xcom_push=False)  # fmt: skip
        def produce():
            import numpy as np

            return np.ones(1 << 20)

        op = produce().operator
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id=op.task_id, run_id="manual__nopush", map_index=-1,
                         try_number=1, xcom_push=lambda key, value: None)  # fmt: skip
    before = _usage(str(cluster.daemon.socket_path))
    assert op.execute({"ti": ti, "run_id": ti.run_id, "dag": dag}) is None
    ((name, run),) = cluster.kubelet.runs.items()
    containers = {c["name"]: c for c in run.pod["spec"]["containers"]}
    assert list(containers) == ["base"], list(containers)
    assert "--output" not in containers["base"].get("args", []), containers["base"].get("args")
    assert run.proc.returncode == 0, cluster.kubelet.logs(name)
    assert _usage(str(cluster.daemon.socket_path)) == before
