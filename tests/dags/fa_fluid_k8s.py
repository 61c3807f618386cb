"""Test DAG: the Fluid operators on the real control plane (tests/test_k8s_operators.py), waiting deferred."""

from __future__ import annotations

from airflow.sdk import dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

CONN = "fluid_k8s_test"


@dag(dag_id="fa_fluid_k8s", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_fluid_k8s():
    create = FluidCreateDatasetOperator(task_id="create_dataset", dataset_name="flights", fluid_conn_id=CONN)
    bind = FluidBindVineyardRuntimeOperator(
        task_id="bind_runtime",
        dataset_name="flights",
        replicas=1,
        cache_capacity="2Gi",
        deferrable=True,
        timeout=240,
        poll_interval=1,
        fluid_conn_id=CONN,
    )

    @task
    def use(runtime: dict) -> str:
        return f"{runtime['namespace']}/{runtime['name']} at {runtime['mount_path']}"

    cleanup = FluidCleanupOperator(
        task_id="cleanup", dataset_name="flights", poll_interval=1, fluid_conn_id=CONN
    )
    create >> bind
    use(bind.output) >> cleanup.as_teardown(setups=[create, bind])


fa_fluid_k8s()
