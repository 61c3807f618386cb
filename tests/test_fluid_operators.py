"""Fluid operators and FluidHook against the Kubernetes API test double (not a cluster).

The double serves the real REST API on loopback and validates every Dataset/VineyardRuntime
against the vendored Fluid CRD schemas; Fluid's controllers are simulated (tests/k8s_double_fluid.py).
"""

from __future__ import annotations

import os

import pytest
from conftest import task_states, xcom_rows
from k8s_double import connect_airflow, kube_double, kube_double_config  # noqa: F401  (pytest fixtures)

from fluid_airflow import exceptions as errors
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

CONN = "fluid_k8s_test"


@pytest.fixture
def fluid_conn(kube_double, kube_double_config, monkeypatch):  # noqa: F811
    connect_airflow(monkeypatch, kube_double_config, CONN)
    return kube_double


@pytest.fixture
def core_api(kube_double_config):  # noqa: F811
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(config_file=str(kube_double_config)))


def task_pod(name: str) -> dict:
    """A task pod that mounts the Dataset's PVC, as pod execution will create them."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "task",
                    "image": "python:3.11",
                    "volumeMounts": [{"name": "vy", "mountPath": "/var/run/vineyard"}],
                }
            ],
            "volumes": [{"name": "vy", "persistentVolumeClaim": {"claimName": "flights"}}],
        },
    }


def create_op(**kw):
    return FluidCreateDatasetOperator(task_id="create", dataset_name="flights", fluid_conn_id=CONN, **kw)


def bind_op(**kw):
    args = {"replicas": 2, "cache_capacity": "30Gi", "timeout": 5, "poll_interval": 0.1, **kw}
    return FluidBindVineyardRuntimeOperator(
        task_id="bind", dataset_name="flights", fluid_conn_id=CONN, **args
    )


def cleanup_op(**kw):
    args = {"timeout": 5, "poll_interval": 0.1, **kw}
    return FluidCleanupOperator(task_id="cleanup", dataset_name="flights", fluid_conn_id=CONN, **args)


def writes(double):
    return [
        (r.method, r.path.split("/v1alpha1/")[-1].split("/v1/")[-1], r.status)
        for r in double.requests
        if r.method != "GET"
    ]


def test_create_dataset_then_rerun_adopts(fluid_conn):
    first = create_op().execute({})
    assert first["created"] is True and first["uid"]
    assert create_op().execute({})["created"] is False
    assert writes(fluid_conn) == [("POST", "namespaces/default/datasets", 201)]
    stored = fluid_conn.get_stored("datasets", "default", "flights")
    assert stored["spec"]["accessModes"] == ["ReadWriteMany"]


def test_create_dataset_with_other_spec_is_a_conflict(fluid_conn):
    create_op().execute({})
    with pytest.raises(errors.FluidConflictError, match="different spec"):
        create_op(access_modes=["ReadOnlyMany"]).execute({})


def test_bad_input_fails_before_any_request(fluid_conn):
    with pytest.raises(errors.FluidSpecError, match="DNS-1035"):
        FluidCreateDatasetOperator(task_id="c", dataset_name="Flights_2013", fluid_conn_id=CONN).execute({})
    with pytest.raises(errors.FluidSpecError, match="Kubernetes quantity"):
        bind_op(cache_capacity="30GB").execute({})
    with pytest.raises(errors.FluidSpecError, match="replicas"):
        bind_op(replicas=0).execute({})
    long_name = "a" * 45
    with pytest.raises(errors.FluidSpecError, match="Shorten"):
        FluidCreateDatasetOperator(task_id="c", dataset_name=long_name, fluid_conn_id=CONN).execute({})
    assert fluid_conn.requests == []


def test_bind_waits_for_bound_and_all_workers(fluid_conn):
    fluid_conn.fluid.ready_after = 0.5
    create_op().execute({})
    result = bind_op().execute({})
    assert result == {
        "namespace": "default", "name": "flights", "backend": "kubernetes",
        "mount_path": "/var/run/vineyard", "ipc_socket": None,
    }  # fmt: skip
    dataset = fluid_conn.get_stored("datasets", "default", "flights")
    runtime = fluid_conn.get_stored("vineyardruntimes", "default", "flights")
    assert dataset["status"]["phase"] == "Bound" and runtime["status"]["workerNumberReady"] == 2
    assert runtime["spec"]["tieredstore"]["levels"] == [
        {"mediumtype": "MEM", "quota": "30Gi", "volumeType": "emptyDir"}
    ]


def test_bound_with_missing_workers_times_out_naming_them(fluid_conn):
    fluid_conn.fluid.workers_ready = 1
    create_op().execute({})
    with pytest.raises(errors.FluidTimeoutError) as err:
        bind_op(timeout=1).execute({})
    message = str(err.value)
    assert (
        "Dataset phase Bound" in message and "workers 1/2 ready" in message and "flights-worker-1" in message
    )


def test_failed_runtime_fails_fast_with_phase_and_conditions(fluid_conn):
    create_op().execute({})
    fluid_conn.fluid.fail_runtime("flights", message="vineyardd OOMKilled")
    with pytest.raises(errors.FluidRuntimeFailedError) as err:
        bind_op(timeout=30).execute({})
    assert "Failed" in str(err.value) and "vineyardd OOMKilled" in str(err.value)


def test_never_ready_times_out_with_pending_pods(fluid_conn):
    fluid_conn.fluid.ready_after = 3600
    create_op().execute({})
    with pytest.raises(
        errors.FluidTimeoutError, match=r"not ready after 1 s: Dataset phase NotBound.*Pending"
    ):
        bind_op(timeout=1).execute({})


def test_cleanup_deletes_blocking_pod_then_dataset_then_runtime(fluid_conn, core_api):
    create_op().execute({})
    bind_op().execute({})
    core_api.create_namespaced_pod("default", task_pod("leftover-task"))
    fluid_conn.set_pod_phase("leftover-task", "Running")
    fluid_conn.requests.clear()
    # The runtime is already gone when we ask: it has an ownerReference to the Dataset, so the
    # garbage collector deletes it with the Dataset (runtime_controller.go, simulated).
    assert cleanup_op().execute({}) == {"pods": ["leftover-task"], "dataset": True, "runtime": False}
    deletes = [path for method, path, _ in writes(fluid_conn) if method == "DELETE"]
    assert deletes == [
        "namespaces/default/pods/leftover-task",
        "namespaces/default/datasets/flights",
        "namespaces/default/vineyardruntimes/flights",
    ]
    assert fluid_conn.get_stored("datasets", "default", "flights") is None
    assert fluid_conn.get_stored("vineyardruntimes", "default", "flights") is None
    # Idempotent: a second run finds nothing and succeeds.
    assert cleanup_op().execute({}) == {"pods": [], "dataset": False, "runtime": False}


def test_cleanup_names_what_blocks_deletion(fluid_conn, core_api):
    create_op().execute({})
    bind_op().execute({})
    fluid_conn.pod_grace_seconds = 3600  # the task pod never finishes terminating
    core_api.create_namespaced_pod("default", task_pod("stuck"))
    with pytest.raises(
        errors.FluidTimeoutError, match=r"pods mounting PVC default/flights .* blocked by: stuck"
    ):
        cleanup_op(timeout=0.5).execute({})


@pytest.mark.parametrize(
    "status, error, fragment",
    [
        (
            403,
            errors.FluidPermissionError,
            "Grant the Airflow service account RBAC verb 'create' on 'datasets.data.fluid.io'",
        ),
        (409, errors.FluidConflictError, "already exists"),
        (422, errors.FluidSpecError, "HTTP 422"),
    ],
)
def test_api_errors_become_named_exceptions(fluid_conn, status, error, fragment):
    fluid_conn.inject("POST", r"/datasets$", status)
    with pytest.raises(error, match=fragment if status != 409 else None):
        create_op().execute({})


def test_transient_500_is_retried(fluid_conn):
    fluid_conn.inject("POST", r"/datasets$", 500)
    assert create_op().execute({})["created"] is True
    assert [s for m, _, s in writes(fluid_conn)] == [500, 201]


def test_fluid_not_installed(fluid_conn):
    fluid_conn.uninstall_fluid()
    with pytest.raises(errors.FluidNotInstalledError, match="Fluid's CRDs are not installed"):
        create_op().execute({})


def test_deferrable_dag_through_the_trigger(fluid_conn, run_dag):
    fluid_conn.fluid.ready_after = 0.5
    dr = run_dag("fa_fluid_k8s")
    assert str(dr.state) == "success", task_states(dr)
    got = {(x.task_id, x.key): x.value for x in xcom_rows(dr.dag_id, dr.run_id)}
    assert got[("use", "return_value")] == "default/flights at /var/run/vineyard"
    assert got[("cleanup", "return_value")] == {"pods": [], "dataset": True, "runtime": False}
    assert fluid_conn.stored("datasets") == [] and fluid_conn.stored("vineyardruntimes") == []


def test_phases_list_datasets_and_runtimes_for_the_ui_page(fluid_conn, monkeypatch):
    """What the handoffs page shows when the fluid connection points at Kubernetes."""
    from fluid_airflow.ui.api import _fluid_phases

    create_op().execute({})
    bind_op().execute({})  # the double binds and readies the runtime
    monkeypatch.setenv("AIRFLOW_CONN_FLUID_DEFAULT", os.environ[f"AIRFLOW_CONN_{CONN.upper()}"])
    shown = _fluid_phases()
    assert shown["backend"] == "kubernetes"
    assert {(r["kind"], r["name"], r["namespace"]) for r in shown["resources"]} == {
        ("Dataset", "flights", "default"),
        ("VineyardRuntime", "flights", "default"),
    }
    phases = {r["kind"]: r["phase"] for r in shown["resources"]}
    assert phases["Dataset"] == "Bound" and phases["VineyardRuntime"] == "master Ready, workers Ready"
    assert any(r.method == "GET" and r.path.endswith("/vineyardruntimes") for r in fluid_conn.requests)
