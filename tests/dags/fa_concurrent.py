"""Test DAG: one run's consumer must see its own producer's object, not another run's."""

from __future__ import annotations

from airflow.sdk import Param, dag, task


@dag(
    dag_id="fa_concurrent",
    schedule=None,
    catchup=False,
    params={"token": Param(0, type="integer"), "barrier_dir": Param("", type="string")},
    tags=["fluid-airflow-tests"],
)
def fa_concurrent():
    @task
    def produce(**context):
        import numpy as np

        return np.full(100_000, float(context["params"]["token"]))

    @task
    def consume(arr, **context) -> dict:
        import time
        from pathlib import Path

        # Wait until the other run has produced too, so both objects live side by side.
        barrier = Path(context["params"]["barrier_dir"])
        (barrier / str(context["params"]["token"])).touch()
        deadline = time.monotonic() + 60
        while len(list(barrier.iterdir())) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the other DAG run never reached the barrier")
            time.sleep(0.1)
        return {"token": context["params"]["token"], "values": sorted({float(v) for v in arr})}

    consume(produce())


fa_concurrent()
