"""Test DAG: a @task.fluid step prints, waits, prints: its output must reach the task log live."""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

DATASET = "stream-test"


@dag(
    dag_id="fa_fluid_stream",
    schedule=None,
    catchup=False,
    params={"pause": Param(10, type="integer", description="seconds between the two prints")},
    tags=["fluid-airflow-tests"],
)
def fa_fluid_stream():
    create = FluidCreateDatasetOperator(task_id="create_dataset", dataset_name=DATASET)
    bind = FluidBindVineyardRuntimeOperator(
        task_id="bind_runtime", dataset_name=DATASET, cache_capacity="64Mi"
    )

    @task.fluid(dataset_name=DATASET)
    def talk(pause: int):
        import time

        import numpy as np

        print("fluid step: first line", flush=False)  # not flushed: the runner must stream anyway
        time.sleep(int(pause))  # a rendered template: a string
        print("fluid step: second line")
        return np.arange(1000.0)

    @task
    def total(arr) -> float:
        return float(arr.sum())

    cleanup = FluidCleanupOperator(task_id="cleanup", dataset_name=DATASET, poll_interval=0.2)
    talked = talk("{{ params.pause }}")
    create >> bind >> talked
    total(talked) >> cleanup.as_teardown(setups=[create, bind])


fa_fluid_stream()
