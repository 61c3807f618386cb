"""Defect 2 of issue 15 on the real control plane: a retried create/bind adopts the Dataset and
VineyardRuntime Fluid v1.0.8 has written back normalised (quantities canonicalised, empty strings dropped,
worker memory requests set), and still refuses a spec that really differs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import NODE_CAPACITY, connected, make_namespace, read_fluid

from fluid_airflow import exceptions as errors
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

CONN, NS, NAME = "fluid_k8s_adopt", "k8s-adopt", "adopt"


def create_op() -> FluidCreateDatasetOperator:
    return FluidCreateDatasetOperator(task_id="create", dataset_name=NAME, placement="", fluid_conn_id=CONN)


def bind_op(**kw) -> FluidBindVineyardRuntimeOperator:
    args = {"replicas": 1, "cache_capacity": "4096Mi", "network_mode": "", "timeout": 240, "poll_interval": 1}
    return FluidBindVineyardRuntimeOperator(
        task_id="bind", dataset_name=NAME, fluid_conn_id=CONN, **{**args, **kw}
    )


@pytest.fixture(scope="module")
def bound(control_plane: ControlPlane) -> Iterator[ControlPlane]:  # noqa: F811
    """Dataset + VineyardRuntime created and bound by Fluid; cleaned up at the end."""
    make_namespace(control_plane, NS)
    control_plane.create_node("adopt-node", {"fluid-airflow.test/pool": "adopt"}, NODE_CAPACITY)
    with connected(CONN, control_plane.admin_kubeconfig, NS):
        assert create_op().execute({})["created"] is True
        bind_op().execute({})
        yield control_plane
        FluidCleanupOperator(
            task_id="cleanup", dataset_name=NAME, fluid_conn_id=CONN, timeout=120, poll_interval=1
        ).execute({})


def test_fluid_normalises_what_we_wrote(bound: ControlPlane):
    """The precondition of the defect, seen on the real API server: Fluid wrote the runtime back through its
    Go types (pkg/ddc/vineyard/transform_resources.go transformResourcesForWorker updates the runtime)."""
    spec = read_fluid(bound, NS, "vineyardruntimes", NAME)["spec"]
    assert spec["tieredstore"]["levels"][0]["quota"] == "4Gi", spec
    assert spec["worker"]["resources"]["requests"]["memory"] == "4596Mi", spec
    assert "networkMode" not in spec["worker"], spec


def test_retried_create_and_bind_adopt_the_normalised_objects(bound: ControlPlane):
    """A retry of both tasks (same arguments) adopts instead of raising FluidConflictError."""
    with connected(CONN, bound.admin_kubeconfig, NS):
        again = create_op().execute({})
        result = bind_op().execute({})
    assert again["created"] is False
    assert result["name"] == NAME and result["backend"] == "kubernetes"


def test_a_really_different_spec_still_conflicts(bound: ControlPlane):
    """Semantic, not blind: another quota (8Gi) or another worker CPU request is still refused."""
    with connected(CONN, bound.admin_kubeconfig, NS):
        with pytest.raises(errors.FluidConflictError, match="different spec"):
            bind_op(cache_capacity="8Gi", wait=False).execute({})
        with pytest.raises(errors.FluidConflictError, match="different spec"):
            bind_op(worker={"resources": {"requests": {"cpu": "2"}}}, wait=False).execute({})
