"""Test DAG: @task.fluid pods on the kubernetes backend, against the API test double and the kubelet double.

Run by ``tests/test_fluid_pods_e2e.py``, which points connections ``fluid_pods_e2e`` (fluid) and
``kube_pods_e2e`` (kubernetes, for KPO's own calls) at the Kubernetes API test double, and runs the pods
with ``tests/kubelet_double.py``. Param ``marker_dir``: when set, ``consume``'s first try fails on purpose.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

DATASET = "pods-e2e"
CONN = "fluid_pods_e2e"
KUBE_CONN = "kube_pods_e2e"
# Pods: an image with fluid-airflow (a cluster pulls it; the kubelet double runs this venv instead). Pod
# logs are not streamed: the API double serves no pods/log subresource.
POD = {"dataset_name": DATASET, "image": "fluid-airflow:e2e", "fluid_conn_id": CONN,
       "kubernetes_conn_id": KUBE_CONN, "get_logs": False}  # fmt: skip


@dag(
    dag_id="fa_fluid_pods",
    schedule=None,
    catchup=False,
    params={"marker_dir": Param("", type="string")},
    tags=["fluid-airflow-tests"],
)
def fa_fluid_pods():
    create = FluidCreateDatasetOperator(task_id="create_dataset", dataset_name=DATASET, fluid_conn_id=CONN)
    bind = FluidBindVineyardRuntimeOperator(
        task_id="bind_runtime",
        dataset_name=DATASET,
        replicas=1,
        cache_capacity="1Gi",
        timeout=30,
        poll_interval=0.2,
        fluid_conn_id=CONN,
    )

    @task.fluid(**POD)
    def produce():
        import numpy as np

        return np.arange(1_000_000, dtype="float64")

    @task.fluid(**POD)
    def produce_frame():
        import pandas as pd

        return pd.DataFrame({"n": range(1000), "name": [f"r{i}" for i in range(1000)]})

    @task.fluid(**POD, retries=1, retry_delay=timedelta(seconds=0))
    def consume(x, frame, marker_dir: str) -> dict:
        from pathlib import Path

        if marker_dir and not (Path(marker_dir) / "consume-tried").exists():
            (Path(marker_dir) / "consume-tried").touch()
            raise RuntimeError("first try fails on purpose")
        return {
            "sum": float(x.sum()),
            "shape": list(x.shape),
            "read_only": not x.flags.writeable,
            "frame_total": int(frame["n"].sum()),
        }

    cleanup = FluidCleanupOperator(
        task_id="cleanup", dataset_name=DATASET, timeout=30, poll_interval=0.2, fluid_conn_id=CONN
    )
    produced, frame = produce(), produce_frame()
    create >> bind >> [produced, frame]
    consume(produced, frame, "{{ params.marker_dir }}") >> cleanup.as_teardown(setups=[create, bind])


fa_fluid_pods()
