"""Test DAG: vineyardd hangs (SIGSTOP) between producer and consumer."""

from __future__ import annotations

from airflow.sdk import Param, dag, task


@dag(dag_id="fa_hang", schedule=None, catchup=False, params={"runtime_dir": Param("", type="string")})
def fa_hang():
    @task
    def produce():
        import numpy as np

        return np.arange(100_000.0)

    @task
    def freeze_vineyardd(runtime_dir: str) -> None:
        # Only on the first run: a marker file tells the re-run to leave vineyardd alone.
        import os
        import signal
        from pathlib import Path

        from fluid_airflow.vineyard.local.daemon import LocalVineyardd

        marker = Path(runtime_dir) / "frozen"
        if not marker.exists():
            os.kill(LocalVineyardd(runtime_dir).pid(), signal.SIGSTOP)
            marker.touch()

    @task
    def consume(arr) -> float:
        return float(arr.sum())

    produced = produce()
    produced >> freeze_vineyardd("{{ params.runtime_dir }}") >> consume(produced)


fa_hang()
