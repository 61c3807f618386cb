"""Test DAG: a multiple_outputs task returning a dict of arrays."""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="fa_multiple_outputs", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_multiple_outputs():
    @task(multiple_outputs=True)
    def split() -> dict:
        import numpy as np

        return {"train": np.ones(300_000), "test": np.zeros(100_000), "rows": 400_000}

    @task
    def use(train, test, everything) -> list:
        return [float(train.sum()), float(test.sum()), sorted(everything), everything["rows"]]

    out = split()
    use(out["train"], out["test"], out)


fa_multiple_outputs()
