"""Test DAG: a producer that puts a 768 MiB DataFrame (one blob) and says when it starts.

Before its push the producer writes its process id to ``<conf pid_dir>/<try number>``, and its
first try stops ``<conf pause>`` seconds (default 30) between allocating the blob and writing it,
so a test can kill or stop things while the put is half-way. One retry.
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
        conf, try_number = context["dag_run"].conf, context["ti"].try_number
        if try_number == 1:
            import time

            from fluid_airflow.vineyard.client import arrow_stream

            populate = arrow_stream.populate

            def pause_then_populate(address: int, size: int) -> None:  # right after create_blob
                time.sleep(float(conf.get("pause", 30)))
                populate(address, size)

            arrow_stream.populate = pause_then_populate  # this process only: the push after return
        pid_file = Path(conf["pid_dir"]) / str(try_number)
        pid_file.write_text(str(os.getpid()))
        return frame

    @task
    def consume(frame):
        return float(frame["c15"].iloc[-1]) + len(frame)

    consume(produce())


fa_big_put()
