"""Test DAG: the run-unique Dataset name macro, rendered in scheduled, manual and backfill runs."""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import dag, task


@dag(
    dag_id="fa_dataset_name",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["fluid-airflow-tests"],
)
def fa_dataset_name():
    @task
    def name(rendered: str) -> str:
        return rendered

    name("{{ macros.fluid_airflow.run_dataset_name('flights', dag_run) }}")


fa_dataset_name()
