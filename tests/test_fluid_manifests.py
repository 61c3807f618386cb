"""Manifest builders: every option validates against the real Fluid CRD schemas; bad input is refused."""

from __future__ import annotations

import copy

import pytest
from k8s_double_schema import CRD_DIR, RESOURCES, admit

from fluid_airflow.exceptions import FluidSpecError
from fluid_airflow.fluid import manifests

AFFINITY = {
    "required": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cache"]}]}]
    }
}
TOLERATIONS = [{"key": "dedicated", "operator": "Equal", "value": "cache", "effect": "NoSchedule"}]
RESOURCES_SPEC = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}

DATASETS = {
    "minimal": {},
    "everything": {
        "access_modes": ["ReadOnlyMany", "ReadWriteMany"],
        "placement": "Shared",
        "node_affinity": AFFINITY,
        "tolerations": TOLERATIONS,
        "labels": {"team": "ml"},
        "annotations": {"owner": "data"},
    },
}
RUNTIMES = {
    "minimal": {},
    "seed": {"replicas": 2, "cache_capacity": "30Gi", "cache_medium": "MEM"},
    "ssd": {
        "cache_medium": "SSD",
        "tier_path": "/mnt/ssd",
        "volume_type": "hostPath",
        "cache_capacity": "1Ti",
    },
    "everything": {
        "replicas": 3,
        "cache_capacity": "1536Mi",
        "master": {
            "replicas": 1,
            "image": "registry.example/etcd",
            "imageTag": "3.5",
            "resources": RESOURCES_SPEC,
        },
        "worker": {
            "options": {"vineyardd.reserve.memory": "true"},
            "resources": RESOURCES_SPEC,
            "nodeSelector": {"pool": "cache"},
        },
        "fuse": {"cleanPolicy": "OnDemand", "options": {"size": "0"}},
        "network_mode": "ContainerNetwork",
        "pod_metadata": {"labels": {"team": "ml"}, "annotations": {"note": "x"}},
    },
}


def validate(plural: str, manifest: dict) -> list[str]:
    """Admit as the test double does (prune, default, validate against the CRD); return pruned fields."""
    warnings: list[str] = []
    admit(RESOURCES[plural], copy.deepcopy(manifest), CRD_DIR, {}, warnings)
    return warnings


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_manifests_validate_against_the_crd(name):
    manifest = manifests.build_dataset("flights", "team-a", **DATASETS[name])
    assert validate("datasets", manifest) == []  # no field the CRD would drop


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_runtime_manifests_validate_against_the_crd(name):
    manifest = manifests.build_vineyard_runtime("flights", "team-a", **RUNTIMES[name])
    assert validate("vineyardruntimes", manifest) == []


def test_seed_runtime_shape():
    spec = manifests.build_vineyard_runtime("flights", "team-a", **RUNTIMES["seed"])["spec"]
    assert spec == {
        "replicas": 2,
        "tieredstore": {"levels": [{"mediumtype": "MEM", "quota": "30Gi", "volumeType": "emptyDir"}]},
    }


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"replicas": 0}, "replicas"),
        ({"replicas": True}, "replicas"),
        ({"cache_capacity": "30GB"}, "Kubernetes quantity"),
        ({"cache_capacity": "0"}, "positive"),
        ({"cache_medium": "NVME"}, "cache medium"),
        ({"cache_medium": "SSD"}, "tier_path"),
        ({"network_mode": "Bridge"}, "network mode"),
    ],
)
def test_bad_runtime_input_is_refused(kwargs, fragment):
    with pytest.raises(FluidSpecError, match=fragment):
        manifests.build_vineyard_runtime("flights", "team-a", **kwargs)


@pytest.mark.parametrize(
    "name, namespace, fragment",
    [
        ("Flights", "team-a", "DNS-1035"),
        ("1flights", "team-a", "DNS-1035"),
        ("flights_2013", "team-a", "DNS-1035"),
        ("flights", "Team_A", "DNS-1123"),
        ("f" * 30, "n" * 20, "Shorten the Dataset name or namespace by 3 characters"),
    ],
)
def test_bad_names_are_refused(name, namespace, fragment):
    with pytest.raises(FluidSpecError, match=fragment):
        manifests.build_dataset(name, namespace)


def test_longest_accepted_name_keeps_every_derived_label_valid():
    name, namespace = "f" * 27, "n" * 20  # len("s-h-vineyard-m-" + ns + "-" + name) == 63
    manifests.build_dataset(name, namespace)
    assert len(manifests.cache_node_label_key(namespace, name).split("/")[1]) <= 63


def test_same_spec_ignores_server_defaults_but_not_changes():
    wanted = manifests.build_vineyard_runtime("flights", "team-a", replicas=2)
    stored = copy.deepcopy(wanted)
    stored["spec"]["master"] = {"replicas": 1}  # defaulted by the API server
    assert manifests.same_spec(stored, wanted)
    stored["spec"]["replicas"] = 3
    assert not manifests.same_spec(stored, wanted)
