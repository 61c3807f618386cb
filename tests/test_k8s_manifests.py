"""Every option of the manifest builders is accepted by the real API server with Fluid v1.0.8's CRDs.

Server-side dry run (``dryRun=All``: admitted, defaulted and validated, not stored) with
``fieldValidation=Strict``, so a field the CRD does not know is an error rather than silently pruned
(Kubernetes API conventions: field validation, kube-apiserver v1.36). The options are those of
``tests/test_fluid_manifests.py``.
"""

from __future__ import annotations

import json

import pytest
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import GROUP, VERSION, make_namespace
from kubernetes import client
from kubernetes.client.rest import ApiException
from manifest_cases import DATASETS, RUNTIMES

from fluid_airflow.fluid import manifests

NS = "k8s-manifests"


@pytest.fixture(scope="module")
def custom(control_plane: ControlPlane) -> client.CustomObjectsApi:  # noqa: F811
    make_namespace(control_plane, NS)
    return client.CustomObjectsApi(control_plane.api_client())


def admitted(custom: client.CustomObjectsApi, plural: str, manifest: dict) -> dict:
    return custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, plural, manifest, dry_run="All", field_validation="Strict"
    )


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_manifests_are_admitted(custom: client.CustomObjectsApi, name: str):
    manifest = manifests.build_dataset("flights", NS, **DATASETS[name])
    assert admitted(custom, "datasets", manifest)["metadata"]["name"] == "flights"  # Strict: nothing dropped


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_runtime_manifests_are_admitted(custom: client.CustomObjectsApi, name: str):
    manifest = manifests.build_vineyard_runtime("flights", NS, **RUNTIMES[name])
    assert admitted(custom, "vineyardruntimes", manifest)["metadata"]["name"] == "flights"


def test_an_unknown_field_is_refused_not_pruned(custom: client.CustomObjectsApi):
    """What makes the tests above able to fail: Strict refuses a field the CRD does not have."""
    manifest = manifests.build_dataset("flights", NS)
    manifest["spec"]["cacheSize"] = "1Gi"
    with pytest.raises(ApiException) as refused:
        admitted(custom, "datasets", manifest)
    message = json.loads(refused.value.body)["message"]
    assert refused.value.status == 400 and 'strict decoding error: unknown field "spec.cacheSize"' in message
