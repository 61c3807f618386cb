"""Defect 3 of issue 15 on the real control plane: a tiered store Fluid v1.0.8 does not deploy (an SSD or HDD
level without a MEM level) is refused before any request, with a message naming the field and the fix.

The first test shows the upstream behaviour the refusal rests on: Fluid's own vineyardruntime-controller,
given such a runtime, fails in ``transformResourcesForWorker`` ("the tierdStore's memory size is not found",
fluid v1.0.8 ``pkg/ddc/vineyard/transform_resources.go:123-125``) and never binds the Dataset.
"""

from __future__ import annotations

import pytest
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import GROUP, VERSION, connected, make_namespace, wait_for
from kubernetes import client

from fluid_airflow import exceptions as errors
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

CONN, NS = "fluid_k8s_tiers", "k8s-tiers"
MESSAGE = "the tierdStore's memory size is not found"


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> ControlPlane:  # noqa: F811
    make_namespace(control_plane, NS)
    return control_plane


def _fluid(kind: str, name: str, spec: dict) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_fluid_never_deploys_an_ssd_only_runtime(plane: ControlPlane):
    """Created by hand (as admin), an SSD-only VineyardRuntime makes Fluid's controller log the error and the
    Dataset stays unbound: our refusal matches what Fluid does."""
    co = client.CustomObjectsApi(plane.api_client())
    co.create_namespaced_custom_object(GROUP, VERSION, NS, "datasets", _fluid("Dataset", "ssd-only", {}))
    level = {"mediumtype": "SSD", "path": "/mnt/ssd", "quota": "1Gi", "volumeType": "hostPath"}
    spec = {"replicas": 1, "tieredstore": {"levels": [level]}}
    co.create_namespaced_custom_object(
        GROUP, VERSION, NS, "vineyardruntimes", _fluid("VineyardRuntime", "ssd-only", spec)
    )
    controller = next(d for d in plane.daemons if d.name == "vineyardruntime-controller")
    wait_for(
        f"controller log {MESSAGE!r}",
        lambda: MESSAGE in controller.log.read_text(errors="replace"),
        90,
        plane,
    )
    dataset = co.get_namespaced_custom_object(GROUP, VERSION, NS, "datasets", "ssd-only")
    assert (dataset.get("status") or {}).get("phase") != "Bound", dataset.get("status")
    for plural in ("vineyardruntimes", "datasets"):
        co.delete_namespaced_custom_object(GROUP, VERSION, NS, plural, "ssd-only")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"cache_medium": "SSD", "tier_path": "/mnt/ssd"}, "cache_medium 'SSD' is not deployable"),
        ({"cache_medium": "HDD", "tier_path": "/mnt/hdd"}, "Set cache_medium='MEM'"),
        ({"tier_path": "/mnt/ssd"}, "tier_path '/mnt/ssd' has no effect"),
    ],
)
def test_bind_refuses_undeployable_tiers_before_any_request(plane: ControlPlane, kwargs: dict, fragment: str):
    """The bind task fails at once with FluidSpecError and no VineyardRuntime reaches the API server."""
    name = f"tiers-{len(kwargs)}-{kwargs.get('cache_medium', 'mem').lower()}"
    op = FluidBindVineyardRuntimeOperator(
        task_id="bind", dataset_name=name, fluid_conn_id=CONN, timeout=5, **kwargs
    )
    with (
        connected(CONN, plane.admin_kubeconfig, NS),
        pytest.raises(errors.FluidSpecError, match=fragment) as refused,
    ):
        op.execute({})
    assert f"VineyardRuntime {NS}/{name}" in str(refused.value)
    co = client.CustomObjectsApi(plane.api_client())
    assert [
        o["metadata"]["name"]
        for o in co.list_namespaced_custom_object(GROUP, VERSION, NS, "vineyardruntimes")["items"]
    ] in ([], ["ssd-only"])
