"""Test DAG: options that need Kubernetes, used with the local fluid backend, fail with clear errors."""

from __future__ import annotations

from airflow.sdk import dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.pod import FluidPodOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

DATASET = "limits-test"


@dag(dag_id="fa_fluid_local_limits", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_fluid_local_limits():
    create = FluidCreateDatasetOperator(task_id="create_dataset", dataset_name=DATASET)
    bind = FluidBindVineyardRuntimeOperator(
        task_id="bind_runtime", dataset_name=DATASET, cache_capacity="64Mi"
    )

    pod = FluidPodOperator(task_id="pod", dataset_name=DATASET, image="python:3.11", cmds=["true"])

    @task.fluid(
        dataset_name=DATASET,
        volumes=[{"name": "data", "hostPath": {"path": "/data"}}],
        volume_mounts=[{"name": "data", "mountPath": "/data"}],
    )
    def with_volume():
        return 1

    @task.fluid(dataset_name=DATASET, image="python:3.11", node_selector={"disk": "ssd"})
    def placed():
        return 2  # placement options are ignored locally: this one succeeds

    cleanup = FluidCleanupOperator(task_id="cleanup", dataset_name=DATASET, poll_interval=0.2)
    steps = [pod, with_volume(), placed()]
    create >> bind >> steps
    steps >> cleanup.as_teardown(setups=[create, bind])


fa_fluid_local_limits()
