"""Test DAGs: a lost Vineyard object, and values that cannot be pushed."""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="fa_lost_object", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_lost_object():
    @task
    def produce():
        import numpy as np

        return np.arange(1000.0)

    @task
    def sabotage(**context) -> None:
        # Delete the producer's object behind Airflow's back, as a vineyardd restart would.
        from fluid_airflow import config
        from fluid_airflow.vineyard.data.naming import xcom_object_name
        from fluid_airflow.vineyard.xcom import backend_hook

        client = backend_hook().get_conn()
        name = xcom_object_name(
            prefix=config.get("name_prefix"),
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
            task_id="produce",
            map_index=-1,
            key="return_value",
        )
        client.delete(client.get_name(name))

    @task
    def catch(**context) -> dict:
        try:
            context["ti"].xcom_pull(task_ids="produce")
        except Exception as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        return {"error": None}

    @task
    def consume(arr) -> float:
        return float(arr.sum())

    produced = produce()
    sabotaged = sabotage()
    produced >> sabotaged >> catch()
    sabotaged >> consume(produced)


@dag(dag_id="fa_unsupported", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_unsupported():
    @task
    def returns_lock():
        import threading

        return threading.Lock()

    @task
    def returns_object_array():
        import numpy as np

        return np.array([{"a": 1}, 2], dtype=object)

    @task
    def after(value) -> str:
        return "should never run"

    after(returns_lock())
    after.override(task_id="after_object_array")(returns_object_array())


fa_lost_object()
fa_unsupported()
