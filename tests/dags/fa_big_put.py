"""Test DAG: a producer that puts a 768 MiB DataFrame (16 blobs) and says when it starts.

Before its push the producer writes its process id to ``<conf pid_dir>/<try number>``, so a
test can kill or stop things while the put is half-way. One retry.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task


@dag(dag_id="fa_big_put", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_big_put():
    @task(retries=1, retry_delay=timedelta(seconds=1))
    def produce(**context):
        import os
        from pathlib import Path

        import numpy as np
        import pandas as pd

        rows = 48 * 2**20 // 8
        frame = pd.DataFrame({f"c{i}": np.full(rows, float(i)) for i in range(16)})
        pid_file = Path(context["dag_run"].conf["pid_dir"]) / str(context["ti"].try_number)
        pid_file.write_text(str(os.getpid()))
        return frame

    @task
    def consume(frame):
        return float(frame["c15"].iloc[-1]) + len(frame)

    consume(produce())


fa_big_put()
