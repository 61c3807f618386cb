"""Inputs of the Dataset and VineyardRuntime builders, from minimal to every option, shared by the
builder tests and the real API server's validation of them (a helper module, not a test module)."""

from __future__ import annotations

AFFINITY = {
    "required": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cache"]}]}]
    }
}
TOLERATIONS = [{"key": "dedicated", "operator": "Equal", "value": "cache", "effect": "NoSchedule"}]
RESOURCES_SPEC = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
WORKER_RESOURCES = {"requests": {"cpu": "500m"}, "limits": {"cpu": "2"}}  # memory: cache_capacity

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
    "hostpath": {"volume_type": "hostPath", "cache_capacity": "1Ti"},
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
            "image": "registry.example/vineyardd",
            "resources": WORKER_RESOURCES,
            "nodeSelector": {"pool": "cache"},
        },
        "fuse": {"cleanPolicy": "OnDemand", "options": {"size": "0"}},
        "network_mode": "ContainerNetwork",
        "pod_metadata": {"labels": {"team": "ml"}, "annotations": {"note": "x"}},
    },
}
