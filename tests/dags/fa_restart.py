"""Test DAG: vineyardd restarts between producer and consumer (every object is lost)."""

from __future__ import annotations

from airflow.sdk import Param, dag, task


@dag(dag_id="fa_restart", schedule=None, catchup=False, params={"runtime_dir": Param("", type="string")})
def fa_restart():
    @task
    def produce():
        import numpy as np

        return np.arange(100_000.0)

    @task
    def restart_vineyardd(runtime_dir: str) -> None:
        # Only on the first run: a marker file tells the re-run to leave vineyardd alone.
        from pathlib import Path

        from fluid_airflow.vineyard.local.daemon import LocalVineyardd

        marker = Path(runtime_dir) / "restarted"
        if not marker.exists():
            daemon = LocalVineyardd(runtime_dir)
            daemon.stop()
            daemon.start("64Mi")
            marker.touch()

    @task
    def consume(arr) -> float:
        return float(arr.sum())

    produced = produce()
    produced >> restart_vineyardd("{{ params.runtime_dir }}") >> consume(produced)


fa_restart()
