"""Test DAG for ``fluid-airflow gc``: mapped arrays, a tree of arrays, and an XCom key with a
space, ``:`` and ``+`` pushed by a task whose id has ``.`` and ``-``.

(Task SDK 1.3.2 does not percent-encode XCom keys and run ids in Execution API paths, so ``dag.test()``
turns a ``%20`` in a key into a space and fails on ``/`` or non-ASCII run ids; tests/test_gc.py
builds such runs through the ORM instead.)"""

from __future__ import annotations

from airflow.sdk import dag, task

ODD_KEY = "odd key: a+b"


@dag(dag_id="fa_gc", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_gc():
    @task
    def make(n: int):
        import numpy as np

        return np.full(1000, float(n))

    @task
    def pair():
        import numpy as np

        return {"left": np.zeros(500), "right": np.ones(700)}

    @task(task_id="odd.task-1")
    def odd(**context):
        import numpy as np

        context["ti"].xcom_push(key=ODD_KEY, value=np.arange(300.0))
        return np.arange(200.0)

    @task
    def total(arrays, both, single) -> float:
        return float(sum(a.sum() for a in arrays) + both["right"].sum() + single.sum())

    total(make.expand(n=[1, 2]), pair(), odd())


fa_gc()
