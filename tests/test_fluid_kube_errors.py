"""API failures the real control plane cannot produce on demand (a 500, a lost create race, Fluid's CRDs
missing), as the kubernetes client raises them: ``ApiException`` with a Kubernetes ``Status`` body.

What they become (:func:`fluid_airflow.fluid.kube.map_api_error`) and which are retried
(:class:`~fluid_airflow.fluid.kube.KubernetesFluidClient`). A real 403 is in ``tests/test_k8s_rbac.py``.
"""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from fluid_airflow import exceptions as errors
from fluid_airflow.fluid.kube import KubernetesFluidClient, map_api_error

DATASETS = "datasets.data.fluid.io"


def api_error(status: int, message: str, causes: list | None = None) -> ApiException:
    exc = ApiException(
        status=status, reason={409: "Conflict", 422: "Unprocessable Entity"}.get(status, "Error")
    )
    body = {"kind": "Status", "status": "Failure", "message": message, "code": status}
    if causes:
        body["details"] = {"causes": causes}
    exc.body = json.dumps(body)
    return exc


@pytest.mark.parametrize(
    "exc, error, fragment",
    [
        (
            api_error(403, 'datasets.data.fluid.io is forbidden: User "x" cannot create'),
            errors.FluidPermissionError,
            "RBAC verb 'create' on 'datasets.data.fluid.io' in namespace 'ns'",
        ),
        (api_error(409, 'datasets "flights" already exists'), errors.FluidConflictError, "already exists"),
        (
            api_error(422, "invalid", [{"field": "spec.accessModes[0]", "message": "Unsupported value"}]),
            errors.FluidSpecError,
            "HTTP 422 Invalid): spec.accessModes[0]: Unsupported value",
        ),
        (
            api_error(404, "the server could not find the requested resource"),
            errors.FluidNotInstalledError,
            "Fluid's CRDs are not installed",
        ),
        (api_error(500, "etcdserver: leader changed"), errors.FluidApiError, "HTTP 500"),
    ],
)
def test_api_errors_become_named_exceptions(exc: ApiException, error: type, fragment: str):
    mapped = map_api_error(exc, "create", DATASETS, "ns", "flights")
    assert isinstance(mapped, error) and fragment in str(mapped), mapped


def test_a_500_is_retried_and_a_409_is_not():
    client = KubernetesFluidClient(kube_hook=None)
    calls: list[int] = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise api_error(500, "etcdserver: request timed out")
        return {"metadata": {"name": "flights"}}

    assert client._call("create", DATASETS, "ns", "flights", flaky) == {"metadata": {"name": "flights"}}
    assert len(calls) == 2

    def taken(*args, **kwargs):
        calls.append(1)
        raise api_error(409, 'datasets "flights" already exists')

    calls.clear()
    with pytest.raises(errors.FluidConflictError):
        client._call("create", DATASETS, "ns", "flights", taken)
    assert len(calls) == 1
