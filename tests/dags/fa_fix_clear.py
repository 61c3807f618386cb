"""Test DAG: an expensive producer and a consumer that fails until it is "fixed".

The consumer fails unless the Airflow Variable ``fa_fix_clear_fixed`` is ``yes`` (the "fix");
the producer records each execution as a file in the run's ``conf["count_dir"]``, so a test can
check it ran exactly once when only the consumer is cleared.
"""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="fa_fix_clear", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_fix_clear():
    @task
    def produce(**context):
        import os
        from pathlib import Path

        import numpy as np

        folder = Path(context["dag_run"].conf["count_dir"])
        (folder / f"produce-{os.getpid()}").touch()
        return np.full(500_000, 2.0)

    @task
    def consume(arr):
        from airflow.sdk import Variable

        if Variable.get("fa_fix_clear_fixed", default="no") != "yes":
            raise ValueError("a bug in consume (set Variable fa_fix_clear_fixed=yes to fix it)")
        return float(arr.sum())

    consume(produce())


fa_fix_clear()
