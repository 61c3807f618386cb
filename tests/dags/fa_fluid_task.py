"""Test DAG: @task.fluid on the local backend — references in, references out, mapped, retried."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

DATASET = "task-test"


@dag(
    dag_id="fa_fluid_task",
    schedule=None,
    catchup=False,
    params={"marker_dir": Param("", type="string"), "scale": Param(3, type="integer")},
    tags=["fluid-airflow-tests"],
)
def fa_fluid_task():
    create = FluidCreateDatasetOperator(task_id="create_dataset", dataset_name=DATASET)
    bind = FluidBindVineyardRuntimeOperator(
        task_id="bind_runtime", dataset_name=DATASET, cache_capacity="256Mi"
    )

    @task.fluid(dataset_name=DATASET)
    def produce(n: int):
        import numpy as np

        return {"values": np.arange(float(n) * 100_000), "label": "arange"}

    @task.fluid(dataset_name=DATASET, env_vars={"FACTOR": "{{ params.scale }}"})
    def scale(k: int):
        import os

        import numpy as np

        # 16 KB: above the default inline floor, so the mapped results are in Vineyard.
        return np.full(2000, float(k) * int(os.environ["FACTOR"]))

    @task.fluid(dataset_name=DATASET, retries=1, retry_delay=timedelta(seconds=0))
    def summarize(data, scaled, marker_dir: str) -> dict:
        from pathlib import Path

        marker = Path(marker_dir) / "summarize-tried"
        if not marker.exists():  # first try fails after reading its inputs
            marker.touch()
            raise RuntimeError("first try fails on purpose")
        return {
            "label": data["label"],
            "total": float(data["values"].sum()),
            "read_only": not data["values"].flags.writeable,
            "scaled": [float(a[0]) for a in scaled],
        }

    @task.fluid(dataset_name=DATASET)
    def describe(arr):
        # Mapped over another @task.fluid's mapped output; returns values Airflow's serde handles.
        import datetime

        import numpy as np

        return {"first": np.float64(arr[0]), "when": datetime.date(2026, 1, 2), "pair": (1, 2)}

    @task
    def plain_total(data) -> float:
        # A plain task on the worker: the reference names the Dataset's vineyardd socket, found locally.
        return float(data["values"].sum())

    cleanup = FluidCleanupOperator(task_id="cleanup", dataset_name=DATASET, poll_interval=0.2)

    produced = produce(4)
    scaled = scale.expand(k=[1, 2, 3])
    result = summarize(produced, scaled, "{{ params.marker_dir }}")
    described = describe.expand(arr=scaled)
    plain = plain_total(produced)
    create >> bind >> [produced, scaled]
    [result, described, plain] >> cleanup.as_teardown(setups=[create, bind])


fa_fluid_task()
