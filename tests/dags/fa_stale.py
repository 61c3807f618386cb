"""Test DAG: values pushed by task code, then changed in place, then returned in a dict.

The consumer must receive what the task returned, not what it pushed earlier (issue: the
``multiple_outputs`` reuse matched by object identity and handed over the first push).
"""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="fa_stale", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_stale():
    @task  # no `-> dict` annotation: that would turn on multiple_outputs
    def plain(ti=None):
        import numpy as np
        import pandas as pd

        arr = np.zeros(200_000)
        df = pd.DataFrame({"v": np.zeros(100_000)})
        ti.xcom_push(key="arr", value=arr)
        ti.xcom_push(key="df", value=df)
        arr += 1.0  # in place, after the push
        df["v"] += 2.0
        return {"arr": arr, "df": df}

    @task(multiple_outputs=True)
    def outputs(ti=None) -> dict:
        import numpy as np

        arr = np.zeros(200_000)
        ti.xcom_push(key="arr", value=arr)
        arr += 3.0
        return {"arr": arr}

    @task
    def check(p, o, arr_key):
        return {
            "plain_arr": float(p["arr"].min()),
            "plain_df": float(p["df"]["v"].min()),
            "outputs_arr": float(o["arr"].min()),
            "outputs_key": float(arr_key.min()),
        }

    o = outputs()
    check(plain(), o, o["arr"])


fa_stale()
