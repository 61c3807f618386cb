"""``@task.fluid`` pods end to end on the kubernetes backend: API test double + kubelet double, no cluster.

KPO (cncf-kubernetes' ``KubernetesPodOperator``, under ``FluidPodOperator``) runs unmodified against the
Kubernetes API test double (``tests/k8s_double.py``) over HTTP, through the real kubernetes client and the
kubeconfig of connection ``kube_pods_e2e``: pod create, read (start, container completion, pod completion,
sidecar checks), list (``find_pod``), patch and delete are real requests. The pods really run: the kubelet
double (``tests/kubelet_double.py``) runs each task pod's command as a local process of this venv, with the
Dataset's PVC at ``/var/run/vineyard`` mapped to a directory whose ``vineyard-config.yaml`` points at a real
local vineyardd (the VineyardRuntime worker of the one "node"), and writes the pod status through the API.

KPO internals replaced, and why (both need ``exec`` into the pod, a websocket the API double does not serve):

- ``PodManager.extract_xcom_json``: KPO execs ``cat /airflow/xcom/return.json`` in the XCom sidecar; here the
  kubelet double reads the file of that pod (``exec_cat``);
- ``PodManager.extract_xcom_kill``: KPO execs ``kill`` of the sidecar's shell; here the kubelet double ends
  the sidecar container (``exec_stop``), after which the pod reaches ``Succeeded``/``Failed``.

Not replaced but turned off by operator arguments: log streaming (``get_logs=False`` in the DAG: no
``pods/log`` subresource). KPO's event watch gets a 404 from the double (no events resource) and stops with
a warning, as its code does for any error.

Checked: DAG ``fa_fluid_pods`` (tests/dags) succeeds with only references crossing the Airflow worker (the
consumer pod's spec, the XCom rows, ``resolved_in_process`` unchanged in this process, which runs the tasks);
the consumer pod's PVC mount and data/object affinity; pods deleted after use; a retried try runs in a new
pod while the failed one is kept. (``on_kill`` deleting the running pod: tests/test_k8s_task_fluid.py.)

Also defect 10 of issue 15: ``do_xcom_push=False`` must not break the runner. Without it KPO adds no XCom
sidecar and no ``/airflow/xcom`` volume (cncf-kubernetes 10.25 ``operators/pod.py``
``build_pod_request_obj``), so the runner must not be told to write ``/airflow/xcom/return.json`` (a
non-root image cannot create it) and must not store a result no XCom row will reference.
"""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest
import yaml
from airflow.providers.cncf.kubernetes.utils.pod_manager import EMPTY_XCOM_RESULT, OnFinishAction, PodManager
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk.serde import serialize
from conftest import task_states, xcom_rows
from k8s_double import connect_airflow, kube_double, kube_double_config  # noqa: F401  (pytest fixtures)
from k8s_double_fluid import worker_ip
from kubelet_double import KubeletDouble

from fluid_airflow.hooks.vineyard import VineyardHook
from fluid_airflow.runner import task as runner
from fluid_airflow.vineyard import xcom as vineyard_xcom
from fluid_airflow.vineyard.data.reference import is_reference
from fluid_airflow.vineyard.local.daemon import LocalVineyardd

DATASET, CONN, KUBE_CONN = "pods-e2e", "fluid_pods_e2e", "kube_pods_e2e"  # as in tests/dags/fa_fluid_pods.py
SPEC_ENV = "__FLUID_TASK_SPEC"
PODS = "/api/v1/namespaces/default/pods/"


@pytest.fixture
def cluster(kube_double, kube_double_config, runtime, tmp_path, monkeypatch):  # noqa: F811
    """Connections to the API double, a vineyardd for the node, the kubelet double, the two exec patches."""
    connect_airflow(monkeypatch, kube_double_config, CONN)
    connect_airflow(monkeypatch, kube_double_config, KUBE_CONN, "kubernetes")
    daemon = LocalVineyardd(runtime)
    with pytest.MonkeyPatch.context() as env:  # vineyardd reports its host as Fluid's worker 0 would
        env.setenv("MY_HOST_NAME", worker_ip(0))
        daemon.start("256Mi")
    try:
        node = tmp_path / "node-a" / DATASET  # what Fluid's fuse shows under the PVC on a worker node
        node.mkdir(parents=True)
        config = {"Vineyard": {"IPCSocket": str(daemon.socket_path), "RPCEndpoint": ""}}
        (node / "vineyard-config.yaml").write_text(yaml.safe_dump(config))
        with KubeletDouble(kube_double_config, {DATASET: node}, tmp_path / "pods") as kubelet:

            def extract_xcom_json(self, pod):  # exec: cat /airflow/xcom/return.json in the sidecar
                text = kubelet.exec_cat(pod.metadata.name, f"{PodDefaults.XCOM_MOUNT_PATH}/return.json")
                return text if text and text.strip() else EMPTY_XCOM_RESULT

            def extract_xcom_kill(self, pod):  # exec: kill the sidecar's shell
                kubelet.exec_stop(pod.metadata.name, PodDefaults.SIDECAR_CONTAINER_NAME)

            monkeypatch.setattr(PodManager, "extract_xcom_json", extract_xcom_json)
            monkeypatch.setattr(PodManager, "extract_xcom_kill", extract_xcom_kill)
            yield SimpleNamespace(api=kube_double, kubelet=kubelet, daemon=daemon)
    finally:
        daemon.stop()


def task_pods(cluster, task_id: str) -> list[dict]:
    """The pods of ``task_id`` as the kubelet double read them from the API double, in creation order."""
    runs = [r.pod for r in cluster.kubelet.runs.values()]
    return [p for p in runs if p["metadata"]["labels"].get("task_id") == task_id]


def deleted_pods(cluster) -> list[str]:
    return [
        r.path.removeprefix(PODS)
        for r in cluster.api.requests
        if r.method == "DELETE" and r.path.startswith(PODS) and r.status == 200
    ]


def pod_name(request) -> str | None:
    """The name of the pod a POST creates."""
    return (request.body or {}).get("metadata", {}).get("name") if request.method == "POST" else None


def assert_succeeded(cluster, dag_run) -> None:
    """Every task succeeded. The run's state alone says little: its leaf, the cleanup task, runs with
    trigger_rule all_done, and Airflow derives the run's state from the leaves."""
    states = task_states(dag_run)
    logs = {name: cluster.kubelet.logs(name)[-2000:] for name in cluster.kubelet.runs}
    assert str(dag_run.state) == "success" and set(states.values()) == {"success"}, (states, logs)


def test_fluid_task_pods_pass_references_only(cluster, run_dag):
    before = vineyard_xcom.resolved_in_process
    dag_run = run_dag("fa_fluid_pods")
    assert_succeeded(cluster, dag_run)
    # The Airflow worker (this process: dag.test() runs tasks in-process) never loaded a payload.
    assert vineyard_xcom.resolved_in_process == before

    rows = {(x.task_id, x.key): x.value for x in xcom_rows(dag_run.dag_id, dag_run.run_id)}
    produced, frame = rows[("produce", "return_value")], rows[("produce_frame", "return_value")]
    assert is_reference(produced) and produced["shape"] == [1_000_000] and produced["bytes"] >= 8_000_000
    assert is_reference(frame) and frame["type"] == "pandas.DataFrame"
    assert rows[("consume", "return_value")] == {
        "sum": float(sum(range(1_000_000))), "shape": [1_000_000], "read_only": True, "frame_total": 499500,
    }  # fmt: skip
    # The reference came out of the producer pod's /airflow/xcom/return.json (via the sidecar "exec").
    (producer,) = task_pods(cluster, "produce")
    assert json.loads(cluster.kubelet.outputs[producer["metadata"]["name"]]) == produced

    (consumer,) = task_pods(cluster, "consume")
    (base,) = [c for c in consumer["spec"]["containers"] if c["name"] == "base"]
    env = {e["name"]: e.get("value") for e in base["env"]}
    spec_text = base64.b64decode(env[SPEC_ENV]).decode()
    assert len(spec_text) < 20_000 and "__vineyard_ref__" in spec_text  # references, not 8 MB of floats
    spec = json.loads(spec_text)
    from airflow.sdk.serde import deserialize

    inputs = deserialize(spec["inputs"])
    assert inputs["args"][:2] == [produced, frame] and inputs["kwargs"] == {}
    assert base["command"][:3] == ["python", "-m", "fluid_airflow.runner.task"]
    # The Dataset's PVC, its mount and the Vineyard config file under it.
    volumes = {v["name"]: v for v in consumer["spec"]["volumes"]}
    assert volumes["fluid-dataset-pods-e2e"] == {
        "name": "fluid-dataset-pods-e2e", "persistentVolumeClaim": {"claimName": DATASET},
    }  # fmt: skip
    assert {"name": "fluid-dataset-pods-e2e", "mountPath": "/var/run/vineyard"} in base["volumeMounts"]
    assert env["VINEYARD_CONFIG"] == "/var/run/vineyard/vineyard-config.yaml"
    # Data affinity (the PVC's cache-node label) and object affinity (the producers' host).
    affinity = consumer["spec"]["affinity"]["nodeAffinity"]
    preferred = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    exprs = [
        (t["preference"]["matchExpressions"][0], t["weight"])
        for t in preferred
        if "matchExpressions" in t["preference"]
    ]
    assert ({"key": "fluid.io/s-default-pods-e2e", "operator": "In", "values": ["true"]}, 100) in exprs
    # the producers' vineyardd reported worker 0's pod IP as its host; the term names that pod's node
    assert produced["host"] == worker_ip(0)
    fields = [
        (t["preference"]["matchFields"], t["weight"]) for t in preferred if "matchFields" in t["preference"]
    ]
    assert fields == [([{"key": "metadata.name", "operator": "In", "values": ["double-node-0"]}], 100)]

    # Every task pod ran to completion on the kubelet double, then KPO deleted it.
    names = list(cluster.kubelet.runs)
    assert len(names) == 3 and all(cluster.kubelet.runs[n].proc.returncode == 0 for n in names)
    assert sorted(deleted_pods(cluster)) == sorted(names) and cluster.kubelet.killed == []
    assert cluster.api.stored("pods") == []  # the runtime's pods went with the cleanup


def test_a_retried_try_runs_in_a_new_pod(cluster, run_dag, dagbag, tmp_path, monkeypatch):
    # The failed try's pod is kept and, as after a worker crash, not labelled "already checked" (KPO's
    # label patch fails once): a retry that reattached to it (KPO's durable default on Airflow 3.3) would
    # take over its failure instead of recomputing. FluidPodOperator sets durable=False.
    consume = dagbag.get_dag("fa_fluid_pods").get_task("consume")
    monkeypatch.setattr(consume, "on_finish_action", OnFinishAction.KEEP_POD)
    cluster.api.inject("PATCH", r"/pods/fluid-task-consume-[a-z0-9]+$", 403)
    dag_run = run_dag("fa_fluid_pods", {"marker_dir": str(tmp_path)})
    assert_succeeded(cluster, dag_run)
    assert (tmp_path / "consume-tried").exists()
    first, second = task_pods(cluster, "consume")
    assert [p["metadata"]["labels"]["try_number"] for p in (first, second)] == ["1", "2"]
    names = [first["metadata"]["name"], second["metadata"]["name"]]
    assert names[0] != names[1]
    runs = [cluster.kubelet.runs[n] for n in names]
    assert runs[0].proc.returncode != 0 and runs[1].proc.returncode == 0
    assert "first try fails on purpose" in cluster.kubelet.logs(names[0])
    # When the retry created its pod, the failed try's pod was still there (Failed), not reused.
    created = next(i for i, r in enumerate(cluster.api.requests) if pod_name(r) == names[1])
    before = cluster.api.requests[:created]
    assert ("DELETE", PODS + names[0]) not in [(r.method, r.path) for r in before]
    statuses = [r.body["status"]["phase"] for r in before if r.path == f"{PODS}{names[0]}/status"]
    assert statuses[-1] == "Failed"
    assert [r.status for r in before if r.method == "PATCH" and r.path == PODS + names[0]] == [403]
    rows = {(x.task_id, x.key): x.value for x in xcom_rows(dag_run.dag_id, dag_run.run_id)}
    assert rows[("consume", "return_value")]["frame_total"] == 499500


# -- do_xcom_push=False ---------------------------------------------------------------------------------

PRODUCE = "def produce():\n    import numpy as np\n    return np.ones(1 << 20)\n"


def _usage(socket: str) -> int:
    return int(VineyardHook(ipc_socket=socket).get_conn().status.memory_usage)


def test_runner_without_output_runs_the_function_and_stores_nothing(vineyardd, tmp_path, monkeypatch):
    monkeypatch.setenv("VINEYARD_IPC_SOCKET", str(vineyardd.socket_path))
    spec = {
        "function": "produce",
        "source": PRODUCE + "open('ran', 'w').write('yes')\n",
        "inputs": serialize({"args": [], "kwargs": {}}),
        "scope": {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.chdir(tmp_path)
    before = _usage(str(vineyardd.socket_path))
    assert runner.main(["--spec", str(tmp_path / "spec.json")]) == 0
    assert (tmp_path / "ran").read_text() == "yes"
    assert _usage(str(vineyardd.socket_path)) == before  # the 8 MiB result was not stored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ran", "spec.json"]


def test_fluid_task_pod_without_xcom_push(cluster):
    """The task pod gets no ``--output`` and no sidecar, its runner exits 0, nothing is stored, and the task
    returns None."""
    from airflow.sdk import DAG, task

    from fluid_airflow.operators.dataset import FluidCreateDatasetOperator
    from fluid_airflow.operators.runtime import FluidBindVineyardRuntimeOperator

    FluidCreateDatasetOperator(task_id="c", dataset_name=DATASET, fluid_conn_id=CONN).execute({})
    FluidBindVineyardRuntimeOperator(task_id="b", dataset_name=DATASET, fluid_conn_id=CONN).execute({})
    with DAG("fa_fluid_nopush", schedule=None) as dag:

        @task.fluid(dataset_name=DATASET, image="fluid-airflow:e2e", fluid_conn_id=CONN,
                    kubernetes_conn_id=KUBE_CONN, get_logs=False, do_xcom_push=False)  # fmt: skip
        def produce():
            import numpy as np

            return np.ones(1 << 20)

        op = produce().operator
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id=op.task_id, run_id="manual__nopush", map_index=-1,
                         try_number=1, xcom_push=lambda key, value: None)  # fmt: skip
    before = _usage(str(cluster.daemon.socket_path))
    assert op.execute({"ti": ti, "run_id": ti.run_id, "dag": dag}) is None
    ((name, run),) = cluster.kubelet.runs.items()
    containers = {c["name"]: c for c in run.pod["spec"]["containers"]}
    assert list(containers) == ["base"], list(containers)
    assert "--output" not in containers["base"].get("args", []), containers["base"].get("args")
    assert run.proc.returncode == 0, cluster.kubelet.logs(name)
    assert _usage(str(cluster.daemon.socket_path)) == before
