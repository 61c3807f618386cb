"""The local backend: Datasets and VineyardRuntimes without Kubernetes, real local vineyardd."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fluid_airflow.exceptions import FluidConflictError, FluidRuntimeFailedError
from fluid_airflow.fluid import manifests
from fluid_airflow.hooks.fluid import FluidHook
from fluid_airflow.hooks.vineyard import VineyardHook


@pytest.fixture
def local_hook(monkeypatch, runtime):
    conn = {
        "conn_type": "fluid",
        "extra": {"backend": "local", "namespace": "team-a", "local_max_cache": "64Mi"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FLUID_LOCAL", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW__FLUID__RUNTIME_DIR", str(runtime))
    hook = FluidHook("fluid_local")
    yield hook
    for plural in (manifests.DATASET_PLURAL, manifests.RUNTIME_PLURAL):
        hook.client.delete(plural, "team-a", "cache")


def bind(hook, capacity="30Gi"):
    hook.ensure(manifests.DATASET_PLURAL, manifests.build_dataset("cache", "team-a"))
    return hook.ensure(
        manifests.RUNTIME_PLURAL,
        manifests.build_vineyard_runtime("cache", "team-a", cache_capacity=capacity, replicas=2),
    )


def test_bind_starts_a_capped_vineyardd_and_reports_ready(local_hook):
    assert local_hook.backend == "local" and local_hook.namespace() == "team-a"
    _, created = bind(local_hook)
    assert created
    verdict = local_hook.wait_ready("team-a", "cache", timeout=10, poll_interval=0.2)
    assert verdict.ready and "workers 2/2" in verdict.message
    client = VineyardHook(ipc_socket=local_hook.client.ipc_socket("team-a", "cache")).get_conn()
    assert client.status.memory_limit == 64 << 20  # 30Gi capped by local_max_cache
    client.put_name(client.put(np.arange(4.0), persist=True), "probe")
    assert client.get(name="probe").sum() == 6


def test_rerun_adopts_and_other_spec_conflicts(local_hook):
    bind(local_hook)
    _, created = bind(local_hook)
    assert not created
    other = manifests.build_vineyard_runtime("cache", "team-a", replicas=3)
    with pytest.raises(FluidConflictError, match="different spec"):
        local_hook.ensure(manifests.RUNTIME_PLURAL, other)


def test_dead_vineyardd_is_a_failed_dataset(local_hook):
    bind(local_hook)
    local_hook.client.daemon("team-a", "cache").stop()
    with pytest.raises(FluidRuntimeFailedError, match="Failed"):
        local_hook.wait_ready("team-a", "cache", timeout=5, poll_interval=0.2)


def test_cleanup_stops_vineyardd_removes_files_and_is_idempotent(local_hook):
    bind(local_hook)
    folder = local_hook.client.folder("team-a", "cache")
    pid = local_hook.client.daemon("team-a", "cache").status().pid
    assert local_hook.cleanup("team-a", "cache", timeout=10, poll_interval=0.2) == {
        "pods": [], "dataset": True, "runtime": True,
    }  # fmt: skip
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not folder.exists()
    assert local_hook.cleanup("team-a", "cache", timeout=10, poll_interval=0.2)["dataset"] is False
