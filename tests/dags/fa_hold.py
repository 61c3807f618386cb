"""Test DAG: a producer, then a task that waits for a file named in the run's conf, then a
consumer. Keeps the producer's object alive (the run is running) for as long as a test needs."""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="fa_hold", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_hold():
    @task
    def produce():
        import numpy as np

        return np.full(100_000, 5.0)

    @task
    def hold(**context):
        import time
        from pathlib import Path

        release = Path(context["dag_run"].conf["release_file"])
        while not release.exists():
            time.sleep(0.5)

    @task
    def consume(arr):
        return float(arr.sum())

    value = produce()
    hold() >> consume(value)


fa_hold()
