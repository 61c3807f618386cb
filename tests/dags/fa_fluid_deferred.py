"""Test DAG: a deferrable sensor waits in the triggerer while a deferrable bind runs (local backend)."""

from __future__ import annotations

from airflow.sdk import dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator
from fluid_airflow.sensors.fluid import FluidDatasetSensor

DATASET = "deferred-test"


@dag(dag_id="fa_fluid_deferred", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_fluid_deferred():
    create = FluidCreateDatasetOperator(task_id="create_dataset", dataset_name=DATASET)
    sensor = FluidDatasetSensor(
        task_id="wait_ready",
        dataset_name=DATASET,
        target="ready",
        deferrable=True,
        poke_interval=1,
        timeout=300,
    )

    @task
    def later(seconds: int) -> None:
        import time

        time.sleep(seconds)  # the sensor is deferred meanwhile

    bind = FluidBindVineyardRuntimeOperator(
        task_id="bind_runtime",
        dataset_name=DATASET,
        cache_capacity="64Mi",
        deferrable=True,
        poll_interval=0.5,
    )

    @task
    def use(runtime: dict) -> str:
        return f"{runtime['namespace']}/{runtime['name']}"

    cleanup = FluidCleanupOperator(task_id="cleanup", dataset_name=DATASET, poll_interval=0.2)
    create >> later(15) >> bind
    create >> sensor
    used = use(bind.output)
    sensor >> used
    used >> cleanup.as_teardown(setups=[create, bind])


fa_fluid_deferred()
