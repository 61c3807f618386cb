"""Helpers for the tests that run our operators on the real control plane (tests/controlplane/).

``connected`` points an Airflow ``fluid`` connection at a kubeconfig; ``make_namespace`` creates a namespace;
``wait_for`` polls with the control plane's health checked and Fluid's logs in the failure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane
from kubernetes import client

GROUP, VERSION = "data.fluid.io", "v1alpha1"
NODE_CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110"}


@contextmanager
def connected(conn_id: str, kubeconfig: Path, namespace: str) -> Iterator[None]:
    """Airflow connection ``conn_id`` (type ``fluid``) to ``kubeconfig`` in ``namespace``, via an env var."""
    extra = {"kube_config_path": str(kubeconfig), "namespace": namespace}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "fluid", "extra": extra}))
        yield


def make_namespace(plane: ControlPlane, name: str) -> str:
    """Create namespace ``name`` (as admin) and return it."""
    plane.core_v1().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def wait_for(what: str, probe: Callable[[], Any], timeout: float, plane: ControlPlane) -> Any:
    """Poll ``probe`` every second until truthy; fail naming ``what`` with the Fluid controllers' logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        plane.check()
        value = probe()
        if value:
            return value
        time.sleep(1.0)
    logs = "\n".join(f"--- {d.name}:\n{d.tail(20)}" for d in plane.daemons if "controller" in d.name)
    pytest.fail(f"{what}: not reached in {timeout:.0f}s\n{logs}")


def read_fluid(plane: ControlPlane, namespace: str, plural: str, name: str) -> dict[str, Any]:
    """A Fluid object as the API server stores it (admin)."""
    co = client.CustomObjectsApi(plane.api_client())
    return co.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)


def create_and_bind(conn_id: str, name: str, pool: dict[str, str], replicas: int = 2) -> None:
    """Create Dataset ``name`` and bind a VineyardRuntime of ``replicas`` workers (1Gi each, Fluid's
    default network mode) on the nodes labelled ``pool``, through our operators and connection ``conn_id``
    (inside :func:`connected`); returns once Fluid bound it."""
    from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
    from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

    FluidCreateDatasetOperator(
        task_id="create", dataset_name=name, placement="", fluid_conn_id=conn_id
    ).execute({})
    FluidBindVineyardRuntimeOperator(
        task_id="bind", dataset_name=name, fluid_conn_id=conn_id, replicas=replicas, cache_capacity="1Gi",
        network_mode="", worker={"nodeSelector": pool}, timeout=240, poll_interval=1,
    ).execute({})  # fmt: skip
