"""Test DAG: a task that pushes, fails its first try and succeeds on retry."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task


@dag(dag_id="fa_retry", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_retry():
    @task(retries=1, retry_delay=timedelta(seconds=0))
    def flaky(**context):
        import numpy as np

        ti = context["ti"]
        ti.xcom_push(key="partial", value=np.full(250_000, float(ti.try_number)))
        if ti.try_number == 1:
            raise RuntimeError("first try fails on purpose")
        return np.full(250_000, 7.0)

    @task
    def consume(arr, **context) -> dict:
        partial = context["ti"].xcom_pull(task_ids="flaky", key="partial")
        return {"total": float(arr.sum()), "partial_try": float(partial[0])}

    consume(flaky())


fa_retry()
