"""Test DAG: a mapped producer read back through every pull path."""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="fa_mapped", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_mapped():
    @task
    def produce(n: int):
        import numpy as np

        # 1,000 values n and 1,000 zeros (16 KB, above the default inline floor: in Vineyard).
        return np.concatenate([np.full(1000, float(n)), np.zeros(1000)])

    @task
    def consume_all(arrays) -> list[float]:
        # A mapped upstream arrives as a lazy sequence; each item is resolved on access.
        return [float(a[0]) for a in arrays]

    @task
    def consume_one(arr) -> float:
        return float(arr.sum())

    @task
    def pull_paths(**context) -> dict:
        ti = context["ti"]
        single = ti.xcom_pull(task_ids="produce", map_indexes=1)
        every = ti.xcom_pull(task_ids="produce")
        return {"single": float(single[0]), "every": [float(a[0]) for a in every]}

    produced = produce.expand(n=[1, 2, 3])
    consume_all(produced)
    consume_one.expand(arr=produced)
    produced >> pull_paths()


fa_mapped()
