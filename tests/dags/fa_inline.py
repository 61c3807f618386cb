"""Test DAG: small arrays and DataFrames stay inline in their XCom rows; a bigger array and a
multiple_outputs dict mix inline and Vineyard leaves; a @task.fluid task reads and returns inline
values. Run with ``[fluid] inline_payload_floor`` at its default (8 KiB)."""

from __future__ import annotations

from airflow.sdk import dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

DATASET = "inline-test"


@dag(dag_id="fa_inline", schedule=None, catchup=False, tags=["fluid-airflow-tests"])
def fa_inline():
    create = FluidCreateDatasetOperator(task_id="create_dataset", dataset_name=DATASET)
    bind = FluidBindVineyardRuntimeOperator(
        task_id="bind_runtime", dataset_name=DATASET, cache_capacity="64Mi"
    )

    @task
    def small_frame():
        import numpy as np
        import pandas as pd

        frame = pd.DataFrame(np.arange(12.0).reshape(3, 4), columns=list("abcd"))  # the 3x4 frame
        frame.loc[1, "b"] = np.nan
        return frame

    @task
    def small_array():
        import numpy as np

        return np.arange(10.0)  # 80 bytes

    @task(multiple_outputs=True)
    def split() -> dict:
        import numpy as np

        return {"X": np.ones((2000, 4)), "y": np.arange(5, dtype=np.int32), "n": 3}

    @task.fluid(dataset_name=DATASET)
    def doubled(arr):
        # Reads an inline upstream value in the runner; returns a small array (inline again).
        return arr * 2

    @task
    def check(frame, arr, x, y, everything, twice) -> dict:
        import numpy as np
        import pandas as pd

        want = pd.DataFrame(np.arange(12.0).reshape(3, 4), columns=list("abcd"))
        want.loc[1, "b"] = np.nan
        pd.testing.assert_frame_equal(frame, want, check_exact=True)
        return {
            "frame": type(frame) is pd.DataFrame,
            "arr": type(arr) is np.ndarray and arr.dtype == np.float64 and arr.tolist() == list(range(10)),
            "x": x.shape == (2000, 4) and float(x.sum()) == 8000.0,
            "y": y.dtype == np.int32 and y.tolist() == [0, 1, 2, 3, 4],
            "everything": sorted(everything) == ["X", "n", "y"] and everything["y"].dtype == np.int32,
            "twice": type(twice) is np.ndarray and twice.tolist() == [2.0 * i for i in range(10)],
        }

    cleanup = FluidCleanupOperator(task_id="cleanup", dataset_name=DATASET, poll_interval=0.2)
    arr = small_array()
    out = split()
    twice = doubled(arr)
    checked = check(small_frame(), arr, out["X"], out["y"], out, twice)
    create >> bind >> twice
    checked >> cleanup.as_teardown(setups=[create, bind])


fa_inline()
