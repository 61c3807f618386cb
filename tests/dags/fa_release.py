"""Test DAG: an explicit release task frees the run's objects."""

from __future__ import annotations

from airflow.sdk import dag, task

from fluid_airflow.operators.release import FluidReleaseRunOperator


@dag(dag_id="fa_release", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_release():
    @task
    def produce():
        import numpy as np

        return np.ones(50_000)

    @task
    def consume(arr) -> float:
        return float(arr.sum())

    consume(produce()) >> FluidReleaseRunOperator(task_id="release")


fa_release()
