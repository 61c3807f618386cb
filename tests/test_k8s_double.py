"""The Kubernetes API test double itself, driven through the real ``kubernetes`` client.

These tests pin the double's API behaviour (errors, metadata, status subresource, selectors, validation) and
its Fluid simulation (docs/design.md §16, §17, §19, §20), so that tests of our code against it mean something.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import k8s_double
import pytest
import yaml
from k8s_double import CRD_DIR, NOT_FOUND, KubeApiDouble
from kubernetes import client
from kubernetes.client import ApiException

SHARED_CRDS = Path(__file__).resolve().parent.parent.parent / "shared" / "fluid-crds"
G, V, NS = "data.fluid.io", "v1alpha1", "default"
# The double's fixtures, taken into this module (another test module can do the same, or a conftest).
kube_double, kube_double_config, kube_double_client = (
    k8s_double.kube_double,
    k8s_double.kube_double_config,
    k8s_double.kube_double_client,
)


def dataset(name: str = "demo", **spec) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "Dataset", "metadata": {"name": name}, "spec": spec}


def runtime(name: str = "demo", replicas: int = 2) -> dict:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "VineyardRuntime",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "tieredstore": {"levels": [{"mediumtype": "MEM", "quota": "1Gi"}]}},
    }


def app_pod(name: str, claim: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "task"}},
        "spec": {
            "containers": [{"name": "task", "image": "python:3.11", "volumeMounts": [
                {"name": "vineyard", "mountPath": "/var/run/vineyard"}]}],
            "volumes": [{"name": "vineyard", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }  # fmt: skip


@pytest.fixture
def custom(kube_double_client) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_double_client)


@pytest.fixture
def core(kube_double_client) -> client.CoreV1Api:
    return client.CoreV1Api(kube_double_client)


def get(custom, plural: str, name: str = "demo") -> dict:
    return custom.get_namespaced_custom_object(G, V, NS, plural, name)


def create(custom, plural: str, body: dict) -> dict:
    return custom.create_namespaced_custom_object(G, V, NS, plural, body)


def error(exc: pytest.ExceptionInfo) -> dict:
    return json.loads(exc.value.body)


# -- vendored CRDs ---------------------------------------------------------------------------------------
def test_vendored_crds_are_the_shared_copies_or_at_least_real_schemas():
    vendored = sorted(p.name for p in CRD_DIR.iterdir())
    assert vendored == [
        "NOTICE.md",
        "data.fluid.io_dataprocesses.yaml",
        "data.fluid.io_datasets.yaml",
        "data.fluid.io_vineyardruntimes.yaml",
    ]
    if SHARED_CRDS.is_dir():  # the CI layout: ../shared next to the repo
        assert sorted(p.name for p in SHARED_CRDS.iterdir()) == vendored
        for name in vendored:
            assert (CRD_DIR / name).read_bytes() == (SHARED_CRDS / name).read_bytes(), name
    for path in CRD_DIR.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == V)
        assert version["schema"]["openAPIV3Schema"]["properties"]["spec"]["type"] == "object", path.name
    assert "Apache License, Version 2.0" in (CRD_DIR / "NOTICE.md").read_text()


# -- plain API behaviour ---------------------------------------------------------------------------------
def test_start_stop_leaves_nothing_running(tmp_path):
    double = KubeApiDouble().start()
    api = client.ApiClient(client.Configuration(host=double.url))  # not the process-wide default
    config = double.write_kubeconfig(tmp_path / "kc", namespace="team-a")
    assert yaml.safe_load(config.read_text())["contexts"][0]["context"]["namespace"] == "team-a"
    double.stop()
    assert not [t for t in threading.enumerate() if t.name == "k8s-api-double"]
    with pytest.raises(Exception):  # noqa: B017  (connection refused, whatever urllib3 calls it)
        client.VersionApi(api).get_code(_request_timeout=2)
    api.close()


def test_discovery_and_bearer_token(kube_double, kube_double_client):
    assert client.VersionApi(kube_double_client).get_code().major == "1"
    groups = client.ApisApi(kube_double_client).get_api_versions().groups
    assert [g.name for g in groups] == [G]
    anonymous = client.ApiClient(client.Configuration(host=kube_double.url))  # no token
    with pytest.raises(ApiException) as exc:
        client.CoreV1Api(anonymous).list_namespaced_pod(NS)
    assert exc.value.status == 401
    anonymous.close()


def test_dataset_crud_metadata_and_status_subresource(custom):
    created = create(custom, "datasets", dataset(accessModes=["ReadWriteMany"]))
    meta = created["metadata"]
    assert meta["namespace"] == NS and meta["generation"] == 1 and len(meta["uid"]) == 36
    assert meta["resourceVersion"].isdigit() and meta["creationTimestamp"].endswith("Z")
    assert "status" not in created  # the controller writes status later, not the create

    with pytest.raises(ApiException) as exc:
        create(custom, "datasets", dataset())
    assert exc.value.status == 409 and error(exc)["reason"] == "AlreadyExists"
    assert error(exc)["message"] == 'datasets.data.fluid.io "demo" already exists'

    current = get(custom, "datasets")  # the simulated dataset controller has acted
    assert current["metadata"]["finalizers"] == ["fluid-dataset-controller-finalizer"]
    assert current["status"] == {"phase": "NotBound", "conditions": []}
    assert [
        d["metadata"]["name"] for d in custom.list_namespaced_custom_object(G, V, NS, "datasets")["items"]
    ] == ["demo"]

    # Replace: spec changes bump generation; a status change through the main resource is ignored.
    current["spec"]["placement"] = "Shared"
    current["status"]["phase"] = "Bound"
    replaced = custom.replace_namespaced_custom_object(G, V, NS, "datasets", "demo", current)
    assert replaced["metadata"]["generation"] == 2 and replaced["status"]["phase"] == "NotBound"
    with pytest.raises(ApiException) as exc:  # stale resourceVersion
        custom.replace_namespaced_custom_object(G, V, NS, "datasets", "demo", current)
    assert exc.value.status == 409 and error(exc)["reason"] == "Conflict"
    del current["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as exc:
        custom.replace_namespaced_custom_object(G, V, NS, "datasets", "demo", current)
    assert (
        exc.value.status == 422 and error(exc)["details"]["causes"][0]["field"] == "metadata.resourceVersion"
    )

    patched = custom.patch_namespaced_custom_object(
        G, V, NS, "datasets", "demo", {"metadata": {"labels": {"a": "b"}}}
    )
    assert patched["metadata"]["labels"] == {"a": "b"} and patched["metadata"]["generation"] == 2

    # /status: only the status changes, and it is validated (conditions are required by the CRD).
    status = custom.patch_namespaced_custom_object_status(
        G, V, NS, "datasets", "demo", {"spec": {"placement": "Exclusive"}, "status": {"ufsTotal": "1GiB"}}
    )
    assert status["status"]["ufsTotal"] == "1GiB" and status["spec"]["placement"] == "Shared"
    body = get(custom, "datasets")
    body["status"] = {"phase": "Pending"}
    with pytest.raises(ApiException) as exc:
        custom.replace_namespaced_custom_object_status(G, V, NS, "datasets", "demo", body)
    assert exc.value.status == 422 and error(exc)["details"]["causes"][0]["field"] == "status.conditions"
    body["status"]["conditions"] = []
    assert custom.replace_namespaced_custom_object_status(G, V, NS, "datasets", "demo", body)["status"] == {
        "phase": "Pending",
        "conditions": [],
    }
    assert (
        custom.get_namespaced_custom_object_status(G, V, NS, "datasets", "demo")["status"]["phase"]
        == "Pending"
    )

    # Finalizer: the deletion is pending (200 + the object, deletionTimestamp set) until it is released.
    deleting = custom.delete_namespaced_custom_object(G, V, NS, "datasets", "demo")
    assert deleting["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as exc:
        get(custom, "datasets")
    assert exc.value.status == 404 and error(exc)["message"] == 'datasets.data.fluid.io "demo" not found'
    assert error(exc)["details"] == {"name": "demo", "group": G, "kind": "datasets"}


def test_generate_name_and_delete_without_finalizer(kube_double, custom):
    kube_double.fluid.paused = True  # no controller: nothing adds a finalizer
    body = dataset()
    body["metadata"] = {"generateName": "run-"}
    name = create(custom, "datasets", body)["metadata"]["name"]
    assert name.startswith("run-") and len(name) == 9
    gone = custom.delete_namespaced_custom_object(G, V, NS, "datasets", name)
    assert gone["status"] == "Success" and gone["details"]["name"] == name


def test_schema_violations_are_422_naming_the_field(custom):
    with pytest.raises(ApiException) as exc:
        create(custom, "datasets", dataset(placement="Sometimes"))
    assert exc.value.status == 422
    body = error(exc)
    assert body["reason"] == "Invalid" and body["kind"] == "Status" and body["status"] == "Failure"
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: "Sometimes": supported values: "Exclusive", "", "Shared"',
            "field": "spec.placement",
        }
    ]
    assert body["message"].startswith('Dataset.data.fluid.io "demo" is invalid: spec.placement: Unsupported')

    bad = runtime()
    bad["spec"]["replicas"] = "two"
    bad["spec"]["tieredstore"]["levels"][0] = {"quota": 5}
    with pytest.raises(ApiException) as exc:
        create(custom, "vineyardruntimes", bad)
    fields = {c["field"]: c["reason"] for c in error(exc)["details"]["causes"]}
    assert fields == {
        "spec.replicas": "FieldValueTypeInvalid",
        "spec.tieredstore.levels[0].mediumtype": "FieldValueRequired",
    }  # quota 5 is fine: int-or-string

    with pytest.raises(ApiException) as exc:
        create(custom, "datasets", dataset("Not_A_Name"))
    assert error(exc)["details"]["causes"][0]["field"] == "metadata.name"


def test_unknown_fields_are_pruned_with_a_warning_or_rejected_when_strict(kube_double, custom):
    created = create(custom, "datasets", dataset(accessModes=["ReadOnlyMany"], mountz=[]))
    assert created["spec"] == {"accessModes": ["ReadOnlyMany"]}
    assert kube_double.requests[-1].warnings == ['unknown field "spec.mountz"']
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(
            G, V, NS, "datasets", dataset("strict", mountz=[]), field_validation="Strict"
        )
    assert exc.value.status == 400 and 'unknown field "spec.mountz"' in error(exc)["message"]
    defaulted = create(custom, "vineyardruntimes", runtime())
    assert defaulted["spec"]["tieredstore"]["levels"][0]["volumeType"] == "hostPath"  # CRD default


def test_pods_are_validated_selected_and_deleted(kube_double, core):
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod(NS, {"metadata": {"name": "p"}, "spec": {"containers": [{"image": "x"}]}})
    assert (
        exc.value.status == 422 and error(exc)["details"]["causes"][0]["field"] == "spec.containers[0].name"
    )
    assert error(exc)["message"] == 'Pod "p" is invalid: spec.containers[0].name: Required value'
    typo = app_pod("typo", "demo")
    typo["spec"]["restartPolicy"], typo["spec"]["volumez"] = "Never", typo["spec"].pop("volumes")
    with pytest.raises(ApiException) as exc:  # stricter than an API server, which would drop the field
        core.create_namespaced_pod(NS, typo)
    assert exc.value.status == 422 and "'volumez' was unexpected" in error(exc)["message"]

    for name, phase in [("a", "Running"), ("b", "Succeeded"), ("c", None)]:
        pod = core.create_namespaced_pod(NS, app_pod(name, "demo"))
        assert pod.status.phase == "Pending" and pod.metadata.uid
        if phase:
            kube_double.set_pod_phase(name, phase)
    listed = core.list_namespaced_pod(NS, label_selector="app=task", field_selector="status.phase!=Succeeded")
    assert [p.metadata.name for p in listed.items] == ["a", "c"]
    assert [
        p.metadata.name for p in core.list_namespaced_pod(NS, label_selector="app in (x,task),!gone").items
    ] == [
        "a",
        "b",
        "c",
    ]
    assert core.list_namespaced_pod(NS, label_selector="app!=task").items == []
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod(NS, field_selector="spec.bogus=1")
    assert exc.value.status == 400

    status = client.V1Pod(status=client.V1PodStatus(phase="Failed"))
    assert core.patch_namespaced_pod_status("c", NS, status).status.phase == "Failed"

    assert core.delete_namespaced_pod("a", NS).metadata.name == "a"
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod("a", NS)
    assert exc.value.status == 404 and error(exc)["message"] == 'pods "a" not found'

    kube_double.pod_grace_seconds = 30
    assert core.delete_namespaced_pod("b", NS).metadata.deletion_timestamp
    assert core.read_namespaced_pod("b", NS).metadata.deletion_grace_period_seconds == 30
    kube_double.advance(31)
    assert [p.metadata.name for p in core.list_namespaced_pod(NS).items] == ["c"]


def test_persistent_volume_claims(core):
    pvc = {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
           "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip
    assert core.create_namespaced_persistent_volume_claim(NS, pvc).status.phase == "Pending"
    assert core.read_namespaced_persistent_volume_claim("data", NS).spec.access_modes == ["ReadWriteOnce"]
    assert len(core.list_namespaced_persistent_volume_claim(NS).items) == 1
    core.delete_namespaced_persistent_volume_claim("data", NS)
    assert core.list_namespaced_persistent_volume_claim(NS).items == []


# -- error injection, missing Fluid, request log ---------------------------------------------------------
def test_injected_errors_have_kubernetes_status_bodies(kube_double, custom):
    kube_double.inject("POST", r"/datasets$", 403)
    with pytest.raises(ApiException) as exc:
        create(custom, "datasets", dataset())
    body = error(exc)
    assert exc.value.status == 403 and body["reason"] == "Forbidden" and body["code"] == 403
    assert body["message"] == (
        'datasets.data.fluid.io is forbidden: User "system:serviceaccount:default:airflow" cannot create '
        'resource "datasets" in API group "data.fluid.io" in the namespace "default"'
    )
    create(custom, "datasets", dataset())  # times=1: the next one goes through

    kube_double.inject("GET", r"/datasets/demo$", 409, message="busy")
    with pytest.raises(ApiException) as exc:
        get(custom, "datasets")
    assert (exc.value.status, error(exc)["reason"], error(exc)["message"]) == (409, "Conflict", "busy")

    kube_double.inject("*", "datasets", 500, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            get(custom, "datasets")
        assert exc.value.status == 500 and error(exc)["reason"] == "InternalError"
    kube_double.inject("GET", "datasets", 503)
    with pytest.raises(ApiException) as exc:
        get(custom, "datasets")
    assert error(exc)["reason"] == "ServiceUnavailable"
    assert get(custom, "datasets")["metadata"]["name"] == "demo"
    assert [r.status for r in kube_double.requests] == [403, 201, 409, 500, 500, 503, 200]


def test_uninstalled_fluid_and_unknown_resources_404(kube_double, custom, core):
    create(custom, "datasets", dataset())
    kube_double.uninstall_fluid()
    for call in (
        lambda: get(custom, "datasets"),
        lambda: create(custom, "vineyardruntimes", runtime()),
        lambda: custom.list_namespaced_custom_object(G, V, NS, "dataprocesses"),
    ):
        with pytest.raises(ApiException) as exc:
            call()
        assert exc.value.status == 404
        expected = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 404}
        assert error(exc) == expected | {"message": NOT_FOUND, "reason": "NotFound", "details": {}}
    assert core.list_namespaced_pod(NS).items == []


def test_requests_are_recorded_in_order_with_bodies(kube_double, custom):
    create(custom, "datasets", dataset())
    custom.patch_namespaced_custom_object(G, V, NS, "datasets", "demo", {"metadata": {"labels": {"x": "1"}}})
    first, second = kube_double.requests
    assert (first.method, first.path, first.body["kind"]) == (
        "POST",
        f"/apis/{G}/{V}/namespaces/{NS}/datasets",
        "Dataset",
    )
    assert (second.method, second.content_type, second.body) == (
        "PATCH",
        "application/merge-patch+json",
        {"metadata": {"labels": {"x": "1"}}},
    )


# -- Fluid simulation ------------------------------------------------------------------------------------
def test_not_bound_until_ready_after_then_bound_with_pvc_and_workers(kube_double, custom, core):
    kube_double.fluid.ready_after = 30
    create(custom, "datasets", dataset(accessModes=["ReadWriteMany"]))
    create(custom, "vineyardruntimes", runtime(replicas=2))
    assert get(custom, "datasets")["status"]["phase"] == "NotBound"
    status = get(custom, "vineyardruntimes")["status"]
    assert (status["masterPhase"], status["workerPhase"], status["workerNumberReady"]) == (
        "NotReady",
        "NotReady",
        0,
    )
    workers = core.list_namespaced_pod(NS, label_selector="app=vineyard,role=vineyard-worker,release=demo")
    assert [(p.metadata.name, p.status.phase) for p in workers.items] == [
        ("demo-worker-0", "Pending"),
        ("demo-worker-1", "Pending"),
    ]
    with pytest.raises(ApiException):
        core.read_namespaced_persistent_volume_claim("demo", NS)

    kube_double.advance(31)
    ds = get(custom, "datasets")
    assert ds["status"]["phase"] == "Bound"
    assert [(c["type"], c["status"], c["reason"], c["message"]) for c in ds["status"]["conditions"]] == [
        ("Ready", "True", "DatasetReady", "The ddc runtime is ready.")
    ]
    assert ds["status"]["runtimes"] == [
        {"name": "demo", "namespace": NS, "category": "Accelerate", "type": "vineyard", "masterReplicas": 1}
    ]
    rt = get(custom, "vineyardruntimes")
    status = rt["status"]
    assert {k: status[k] for k in ("masterPhase", "workerPhase", "fusePhase")} == dict.fromkeys(
        ("masterPhase", "workerPhase", "fusePhase"), "Ready"
    )
    assert status["desiredWorkerNumberScheduled"] == status["workerNumberReady"] == 2
    assert {c["type"] for c in status["conditions"] if c["status"] == "True"} >= {
        "MasterReady",
        "WorkersReady",
    }
    assert rt["metadata"]["finalizers"] == ["vineyard-runtime-controller-finalizer"]
    assert rt["metadata"]["ownerReferences"][0]["uid"] == ds["metadata"]["uid"]
    pvc = core.read_namespaced_persistent_volume_claim("demo", NS)
    assert pvc.metadata.labels == {"fluid.io/s-default-demo": "true", "fluid.io/dataset-id": "default-demo"}
    assert pvc.spec.access_modes == ["ReadWriteMany"] and pvc.status.phase == "Bound"
    pods = core.list_namespaced_pod(NS, label_selector="release=demo", field_selector="status.phase=Running")
    assert sorted(p.metadata.name for p in pods.items) == ["demo-master-0", "demo-worker-0", "demo-worker-1"]
    # Steady state: re-reading changes nothing.
    assert get(custom, "vineyardruntimes")["metadata"]["resourceVersion"] == rt["metadata"]["resourceVersion"]


def test_long_names_label_with_the_dataset_uid(custom, core):
    name = "d" * 52  # len("fluid.io/s-default-" + name) == 71 >= 63
    uid = create(custom, "datasets", dataset(name))["metadata"]["uid"]
    create(custom, "vineyardruntimes", runtime(name))
    labels = core.read_namespaced_persistent_volume_claim(name, NS).metadata.labels
    assert labels == {f"fluid.io/s-{uid}": "true", "fluid.io/dataset-id": f"default-{name}"}


def test_bound_with_fewer_ready_workers_than_desired(kube_double, custom, core):
    kube_double.fluid.workers_ready = 1
    create(custom, "datasets", dataset())
    create(custom, "vineyardruntimes", runtime(replicas=3))
    assert get(custom, "datasets")["status"]["phase"] == "Bound"
    status = get(custom, "vineyardruntimes")["status"]
    assert (status["workerPhase"], status["workerNumberReady"], status["desiredWorkerNumberScheduled"]) == (
        "PartialReady",
        1,
        3,
    )
    pods = core.list_namespaced_pod(NS, label_selector="role=vineyard-worker")
    assert [p.status.phase for p in pods.items] == ["Running", "Pending", "Pending"]
    kube_double.fluid.workers_ready = 0  # the last ready worker goes: the health check fails
    assert get(custom, "datasets")["status"]["phase"] == "Failed"


def test_failed_runtime(kube_double, custom, core):
    create(custom, "datasets", dataset())
    create(custom, "vineyardruntimes", runtime())
    kube_double.fluid.fail_runtime("demo", message="etcd unreachable")
    ds = get(custom, "datasets")
    assert ds["status"]["phase"] == "Failed"
    assert ds["status"]["conditions"][0]["message"] == "The ddc runtime is not ready."
    status = get(custom, "vineyardruntimes")["status"]
    assert status["workerPhase"] == "NotReady" and status["workerNumberReady"] == 0
    assert any(
        c["type"] == "WorkersReady" and c["message"] == "etcd unreachable" for c in status["conditions"]
    )
    pending = core.list_namespaced_pod(
        NS, label_selector="role=vineyard-worker", field_selector="status.phase=Pending"
    )
    assert len(pending.items) == 2


def test_dataset_deletion_waits_for_pods_using_the_pvc(kube_double, custom, core):
    create(custom, "datasets", dataset())
    create(custom, "vineyardruntimes", runtime())
    core.create_namespaced_pod(NS, app_pod("user", "demo"))
    kube_double.set_pod_phase("user", "Running")
    core.create_namespaced_pod(NS, app_pod("done", "demo"))
    kube_double.set_pod_phase("done", "Succeeded")  # finished pods do not block (notes §7)

    assert custom.delete_namespaced_custom_object(G, V, NS, "datasets", "demo")["metadata"][
        "deletionTimestamp"
    ]
    held = get(custom, "datasets")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"]

    core.delete_namespaced_pod("user", NS)
    with pytest.raises(ApiException) as exc:
        get(custom, "datasets")
    assert exc.value.status == 404
    # The runtime had an ownerReference to the Dataset: garbage-collected, and its PVC and pods with it.
    with pytest.raises(ApiException):
        get(custom, "vineyardruntimes")
    assert [p.metadata.name for p in core.list_namespaced_pod(NS).items] == ["done"]
    assert core.list_namespaced_persistent_volume_claim(NS).items == []


def test_runtime_deletion_unbinds_the_dataset(kube_double, custom, core):
    create(custom, "datasets", dataset())
    create(custom, "vineyardruntimes", runtime())
    assert get(custom, "datasets")["status"]["phase"] == "Bound"
    core.create_namespaced_pod(NS, app_pod("user", "demo"))
    custom.delete_namespaced_custom_object(G, V, NS, "vineyardruntimes", "demo")
    assert get(custom, "vineyardruntimes")["metadata"]["deletionTimestamp"]  # PVC in use (notes §7)
    core.delete_namespaced_pod("user", NS)
    with pytest.raises(ApiException):
        get(custom, "vineyardruntimes")
    status = get(custom, "datasets")["status"]
    assert (status["phase"], status["conditions"], status["runtimes"]) == ("NotBound", [], [])
    assert core.list_namespaced_pod(NS).items == []
    assert core.list_namespaced_persistent_volume_claim(NS).items == []


def test_kubernetes_hook_against_the_double(kube_double_config):
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client import Configuration

    saved = Configuration._default  # load_kube_config() replaces the process-wide default: put it back
    try:
        hook = KubernetesHook(conn_id=None, kubernetes_conn_id=None, config_file=str(kube_double_config))
        created = hook.create_custom_object(G, V, "datasets", dataset(), namespace=NS)
        assert created["metadata"]["uid"]
        assert hook.get_custom_object(G, V, "datasets", "demo", namespace=NS)["status"]["phase"] == "NotBound"
    finally:
        Configuration._default = saved
