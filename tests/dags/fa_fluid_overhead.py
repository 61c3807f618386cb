"""Bench DAG (``bench/fluid_overhead.py``): the same trivial function as a plain ``@task`` and as a
``@task.fluid`` task, alternating one after the other so both see the same machine load."""

from __future__ import annotations

from airflow.sdk import chain, dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

DATASET = "overhead-bench"
PAIRS = 5


@dag(dag_id="fa_fluid_overhead", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_fluid_overhead():
    create = FluidCreateDatasetOperator(task_id="create_dataset", dataset_name=DATASET)
    bind = FluidBindVineyardRuntimeOperator(
        task_id="bind_runtime", dataset_name=DATASET, cache_capacity="64Mi"
    )

    def work(i: int) -> int:
        return sum(range(1000)) + i

    steps = []
    for i in range(PAIRS):
        steps.append(task(task_id=f"plain_{i}")(work)(i))
        steps.append(task.fluid(task_id=f"fluid_{i}", dataset_name=DATASET)(work)(i))
    cleanup = FluidCleanupOperator(task_id="cleanup", dataset_name=DATASET, poll_interval=0.2)
    chain(create, bind, *steps)
    steps[-1] >> cleanup.as_teardown(setups=[create, bind])


fa_fluid_overhead()
