"""Manifest builders: their shape, and bad input refused. That every option is accepted by the real API
server with Fluid v1.0.8's CRDs: tests/test_k8s_manifests.py."""

from __future__ import annotations

import copy
import importlib.metadata

import pytest
from manifest_cases import RUNTIMES

from fluid_airflow.exceptions import FluidSpecError
from fluid_airflow.fluid import manifests


def test_seed_runtime_shape():
    spec = manifests.build_vineyard_runtime("flights", "team-a", **RUNTIMES["seed"])["spec"]
    version = importlib.metadata.version("vineyard")
    assert spec == {
        "replicas": 2,
        "tieredstore": {"levels": [{"mediumtype": "MEM", "quota": "30Gi", "volumeType": "emptyDir"}]},
        "worker": {"image": "ghcr.io/v6d-io/v6d/vineyardd", "imageTag": f"alpine-v{version}"},
        "fuse": {"image": "ghcr.io/v6d-io/v6d/vineyard-fluid-fuse", "imageTag": f"v{version}"},
    }


def test_images_match_the_client_unless_chosen():
    """Defect 8: worker and fuse get the client version (Fluid defaults to v0.22.2); a chosen image wins."""
    assert manifests.vineyard_images("0.24.2") == {
        "worker": {"image": "ghcr.io/v6d-io/v6d/vineyardd", "imageTag": "alpine-v0.24.2"},
        "fuse": {"image": "ghcr.io/v6d-io/v6d/vineyard-fluid-fuse", "imageTag": "v0.24.2"},
    }
    spec = manifests.build_vineyard_runtime("flights", "team-a", **RUNTIMES["everything"])["spec"]
    assert spec["worker"]["image"] == "registry.example/vineyardd" and "imageTag" not in spec["worker"]
    assert spec["fuse"]["imageTag"].startswith("v") and spec["master"]["image"] == "registry.example/etcd"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"replicas": 0}, "replicas"),
        ({"replicas": True}, "replicas"),
        ({"cache_capacity": "30GB"}, "Kubernetes quantity"),
        ({"cache_capacity": "0"}, "positive"),
        ({"cache_medium": "NVME"}, "cache_medium 'NVME'"),
        ({"cache_medium": "SSD", "tier_path": "/mnt/ssd"}, "requires a MEM tiered-store level"),
        ({"cache_medium": "HDD", "tier_path": "/mnt/hdd"}, "Set cache_medium='MEM'"),
        ({"tier_path": "/mnt/ssd"}, "tier_path '/mnt/ssd' has no effect"),
        ({"network_mode": "Bridge"}, "network mode"),
        ({"worker": {"options": {"etcd.prefix": "/x"}}}, r"worker\.options .* would have no effect"),
        ({"master": {"options": {"a": "b"}}}, r"master\.options .* would have no effect"),
        ({"worker": {"resources": {"requests": {"memory": "6Gi"}}}}, r"requests\.memory '6Gi'.*string comp"),
        ({"worker": {"resources": {"limits": {"memory": "8Gi"}}}}, r"limits\.memory '8Gi'.*cache_capacity"),
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
        ("f" * 30, "n" * 21, "'fluid.io/s-n{21}-f{30}' has 63, so Fluid would key it by the Dataset's UID"),
        ("f" * 31, "n" * 21, "Shorten the Dataset name or namespace by 2 characters"),
    ],
)
def test_bad_names_are_refused(name, namespace, fragment):
    """The last two: Fluid v1.0.8 keys the label by UID from 63 characters on (issue 15, defect 11)."""
    with pytest.raises(FluidSpecError, match=fragment):
        manifests.build_dataset(name, namespace)


def test_a_62_character_cache_label_key_is_kept():
    manifests.build_dataset("f" * 30, "n" * 20)  # 'fluid.io/s-' + 20 + '-' + 30 = 62: Fluid keeps the name


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


def test_spec_comparison_allows_fluids_normalisation_only():
    """Issue 15 defect 2: the rules of fluid_airflow.fluid.compare (real write-back: test_k8s_adopt.py)."""
    from fluid_airflow.fluid.compare import spec_differences

    wanted = manifests.build_vineyard_runtime("flights", "team-a", cache_capacity="4096Mi", network_mode="")
    wanted["spec"]["worker"]["resources"] = {"requests": {"memory": "1Gi"}}  # as an older release wrote
    stored = copy.deepcopy(wanted)
    stored["spec"]["tieredstore"]["levels"][0]["quota"] = "4Gi"
    images = manifests.vineyard_images()
    stored["spec"]["worker"] = {**images["worker"], "resources": {"requests": {"memory": "4596Mi"}}}  # +500Mi
    del stored["spec"]["master"]  # networkMode "" dropped
    stored["spec"]["fuse"] = images["fuse"]
    assert spec_differences(stored, wanted) == []
    stored["spec"]["worker"]["resources"]["requests"]["memory"] = "5Gi"
    assert spec_differences(stored, wanted) == ["spec.worker.resources.requests.memory"]
    stored["spec"]["tieredstore"]["levels"][0]["quota"] = "4097Mi"
    assert "spec.tieredstore.levels[0].quota" in spec_differences(stored, wanted)
