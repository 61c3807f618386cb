"""Test DAG: a step fails; the cleanup teardown still runs and the DAG run still fails."""

from __future__ import annotations

from airflow.sdk import dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator


@dag(dag_id="fa_fluid_teardown", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_fluid_teardown():
    create = FluidCreateDatasetOperator(task_id="create_dataset", dataset_name="teardown-test")
    bind = FluidBindVineyardRuntimeOperator(
        task_id="bind_runtime", dataset_name="teardown-test", cache_capacity="64Mi"
    )

    @task.fluid(dataset_name="teardown-test")
    def step():
        raise ValueError("the step fails on purpose")

    cleanup = FluidCleanupOperator(task_id="cleanup", dataset_name="teardown-test", poll_interval=0.2)
    create >> bind >> step() >> cleanup.as_teardown(setups=[create, bind])


fa_fluid_teardown()
