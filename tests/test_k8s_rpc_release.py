"""Issue 17 build 4: Airflow's components free a Dataset's objects over Vineyard RPC.

References written by pods name the socket under the pod's ``/var/run/vineyard``, which the scheduler (run-end
release), `fluid-airflow gc`, the API server (the handoffs page) and a task process purging a row do not have.
They reach the Dataset's vineyardd over RPC instead, through a ``vineyard`` connection naming the Dataset
(extra ``{"ipc_socket": <pod socket>, "dataset": "<ns>/<name>"}``, as deploy/airflow/values.yaml sets it),
whose endpoints are read from the ConfigMap Fluid publishes for the runtime.

Real: the Dataset and its two-worker VineyardRuntime (Fluid's controllers on the real control plane), the
ConfigMap ``rpc-data-rpc-conf`` Fluid's chart made from it, read as a ServiceAccount bound to
deploy/rbac/role.yaml; a Vineyard cluster of two vineyardd with RPC sharing one etcd (each standing for one
worker); Airflow's metadata DB; the listener's `fluid-airflow release` command, `fluid-airflow gc`, the
backend's purge and the page's API, each in a process of its own.
Played (tests/k8s_rpc_play.py, tests/k8s_task_play.py), since kwok runs no container and this host has no
cluster DNS: the pods that store and read the values (a process with the worker's socket at
``/var/run/vineyard/vineyard-worker.sock`` in a private mount namespace, so the references name that path,
which does not exist for the components); cluster DNS (an ``/etc/hosts`` in the components' mount namespace
maps each endpoint's name to its worker pod's IP, as given by the API server); and each worker's network (its
RPC port on its pod IP relayed to the vineyardd standing for it). The holder of a copy is then reached at the
endpoint it advertises in the cluster's metadata, as on a cluster (there: ``<pod IP>:<port>``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest import local_cluster
from controlplane import ControlPlane
from controlplane.fixtures import control_plane  # noqa: F401 - the session fixture
from k8s_plane import NODE_CAPACITY, connected, create_and_bind, make_namespace, wait_for
from k8s_rpc_play import POD_SOCKET, in_pod
from k8s_task_play import cluster_dns, rpc_conf, tcp_relay
from kubernetes import client

from fluid_airflow.fluid import manifests
from fluid_airflow.hooks.vineyard import VineyardHook
from fluid_airflow.operators.cleanup import FluidCleanupOperator
from fluid_airflow.vineyard.local.cluster import LocalVineyardCluster

NS, NAME, CONN, VINEYARD_CONN = "k8s-rpc", "rpc-data", "fluid_k8s_rpc", "vineyard_k8s_rpc"
POOL, NODES = {"fluid-airflow.test/pool": "rpc"}, ("rpc-node-a", "rpc-node-b")
TESTS = Path(__file__).resolve().parent
PLAY = TESTS / "k8s_rpc_play.py"
ROLE = TESTS.parent / "deploy" / "rbac" / "role.yaml"


@pytest.fixture(scope="module")
def bound(control_plane: ControlPlane) -> Iterator[Path]:  # noqa: F811
    """Dataset + two-worker VineyardRuntime bound by Fluid; yields the kubeconfig of ServiceAccount
    ``airflow-scheduler`` bound to deploy/rbac/role.yaml, the identity of the components' fluid connection."""
    make_namespace(control_plane, NS)
    client.RbacAuthorizationV1Api(control_plane.api_client()).create_namespaced_role(
        NS, yaml.safe_load(ROLE.read_text())
    )
    for node in NODES:
        control_plane.create_node(node, POOL, NODE_CAPACITY)
    with connected(CONN, control_plane.admin_kubeconfig, NS):
        create_and_bind(CONN, NAME, POOL)
        core = control_plane.core_v1()
        wait_for("both workers with a pod IP", lambda: len(_worker_ips(core)) == 2, 60, control_plane)
        yield control_plane.service_account_kubeconfig(NS, "airflow-scheduler", "fluid-airflow")
        FluidCleanupOperator(
            task_id="cleanup", dataset_name=NAME, fluid_conn_id=CONN, timeout=120, poll_interval=1
        ).execute({})


def _worker_ips(core: Any) -> list[str]:
    pods = core.list_namespaced_pod(NS, label_selector=manifests.worker_selector(NAME)).items
    return [p.status.pod_ip for p in pods if p.status.pod_ip]


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalVineyardCluster]:
    """Two vineyardd with RPC sharing one etcd: the runtime's workers 0 and 1."""
    monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_TIMEOUT", "5")
    with local_cluster(2, "fa-r-") as cluster:
        yield cluster


@pytest.fixture
def network(bound: Path, workers: LocalVineyardCluster, control_plane: ControlPlane, tmp_path: Path):  # noqa: F811
    """Cluster DNS and the workers' network, played: yields the ``/etc/hosts`` of the components."""
    core = control_plane.core_v1()
    names = rpc_conf(core, NS, NAME)  # as Fluid published them
    assert [n.rpartition(":")[0] for n in names] == [f"{NAME}-worker-{i}.{NAME}-worker.{NS}" for i in (0, 1)]
    addresses = [cluster_dns(core, n) for n in names]
    hosts = tmp_path / "hosts"
    lines = [f"{a.rpartition(':')[0]} {n.rpartition(':')[0]}" for a, n in zip(addresses, names, strict=True)]
    hosts.write_text(Path("/etc/hosts").read_text() + "\n".join(lines) + "\n")
    hosts.chmod(0o644)
    with contextlib.ExitStack() as relays:
        for address, instance in zip(addresses, workers.instances(), strict=True):
            host, _, port = address.rpartition(":")
            relays.enter_context(tcp_relay((host, int(port)), ("127.0.0.1", instance.rpc_port)))
        yield hosts


def _env(kubeconfig: Path, dataset: str = f"{NS}/{NAME}", **extra: str) -> dict[str, str]:
    """The components' environment: the backend's connection names the Dataset (and the pod socket, absent
    here), the fluid connection is the ServiceAccount's."""
    vineyard = {"ipc_socket": POD_SOCKET, "dataset": dataset, "fluid_conn_id": CONN}
    fluid = {"kube_config_path": str(kubeconfig), "namespace": NS}
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
        "AIRFLOW__FLUID__VINEYARD_CONN_ID": VINEYARD_CONN,
        f"AIRFLOW_CONN_{VINEYARD_CONN.upper()}": json.dumps({"conn_type": "vineyard", "extra": vineyard}),
        f"AIRFLOW_CONN_{CONN.upper()}": json.dumps({"conn_type": "fluid", "extra": fluid}),
        **extra,
    }


def _run(argv: list[str], env: dict[str, str], **where: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(in_pod(argv, **where), env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (
        f"{argv[1:]}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    return done


def _play(command: str, dag_id: str, env: dict[str, str], **where: Path) -> Any:
    done = _run([sys.executable, str(PLAY), command, dag_id, "manual__rpc"], env, **where)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pod_env(socket: str) -> dict[str, str]:
    """A task pod's environment: the backend uses the socket Fluid's fuse puts under the PVC."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.pop("AIRFLOW__FLUID__VINEYARD_CONN_ID", None)
    return {
        **env,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
        "AIRFLOW__FLUID__VINEYARD_SOCKET": socket,
    }


def _pvc(tmp_path: Path, name: str, socket: str) -> Path:
    """The PVC as the fuse shows it on a worker's node: that worker's socket, hard-linked."""
    folder = tmp_path / name
    folder.mkdir()
    os.link(socket, folder / "vineyard-worker.sock")
    return folder


def _used(workers: LocalVineyardCluster) -> list[int]:
    """Bytes used on each instance, asked by the test over IPC (the test's own view, not the components')."""
    return [
        int(VineyardHook(ipc_socket=i.socket).get_conn().status.memory_usage) for i in workers.instances()
    ]


def _names(workers: LocalVineyardCluster) -> dict[str, Any]:
    return dict(VineyardHook(ipc_socket=workers.instances()[0].socket).get_conn().list_names("*", limit=1000))


def _stored_and_copied(workers: LocalVineyardCluster, dag_id: str, tmp_path: Path) -> None:
    """A pod on worker 0's node stores two XComs; a pod on worker 1's node reads them (migrated copies)."""
    instances = workers.instances()
    refs = _play("produce", dag_id, _pod_env(POD_SOCKET), pvc=_pvc(tmp_path, "pvc0", instances[0].socket))
    assert {r["socket"] for r in refs.values()} == {POD_SOCKET}  # what pods' references name
    assert not Path(POD_SOCKET).exists()  # ... and the components do not have
    handoffs = _play("consume", dag_id, _pod_env(POD_SOCKET), pvc=_pvc(tmp_path, "pvc1", instances[1].socket))
    assert handoffs.get("migrated") == 2, handoffs
    used = _used(workers)
    assert used[0] > 3_000_000 and used[1] == used[0], used  # the originals and a full copy of each
    copies = [n for n in _names(workers) if "#" in n]
    assert len(copies) == 2, copies


def _assert_all_freed(workers: LocalVineyardCluster) -> None:
    assert _used(workers) == [0, 0]
    assert _names(workers) == {}


@pytest.fixture
def stored(airflow_db, network: Path, workers: LocalVineyardCluster, tmp_path: Path, request) -> str:
    dag_id = f"fa_rpc_{request.node.name.split('[')[0].removeprefix('test_')[:40]}"
    _stored_and_copied(workers, dag_id, tmp_path)
    return dag_id


def test_run_end_release_frees_the_objects_and_every_copy_over_rpc(
    stored: str, bound: Path, network: Path, workers: LocalVineyardCluster, monkeypatch: pytest.MonkeyPatch
):
    """The scheduler's listener, at the run's end, starts `fluid-airflow release`; run here as it would."""
    from fluid_airflow.plugins import expiry, release_listener

    spawned: list[list[str]] = []
    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "0")
    monkeypatch.setattr(expiry, "in_scheduler", lambda: True)
    monkeypatch.setattr(expiry, "ensure_started", lambda component=None: False)
    monkeypatch.setattr(expiry, "spawn", spawned.append)
    release_listener._release(SimpleNamespace(dag_id=stored, run_id="manual__rpc", clear_number=0), "success")
    (args,) = spawned
    done = _run([sys.executable, "-m", "fluid_airflow.cli", *args], _env(bound), hosts=network)
    assert "released 4 objects" in done.stdout, done.stdout
    _assert_all_freed(workers)


def test_purge_frees_the_objects_and_every_copy_over_rpc(
    stored: str, bound: Path, network: Path, workers: LocalVineyardCluster
):
    """Airflow's purge of each XCom row (a cleared or retried task), in a process without the pod's socket."""
    done = _play("purge", stored, _env(bound), hosts=network)
    assert done["warnings"] == [], done["warnings"]
    assert done["rpc_endpoint"].split(":")[0] in network.read_text(), done  # a worker's pod IP
    _assert_all_freed(workers)


def test_gc_frees_the_objects_and_every_copy_over_rpc(
    stored: str, bound: Path, network: Path, workers: LocalVineyardCluster
):
    """`fluid-airflow gc` after the run was deleted (in Airflow's UI or `airflow db clean`)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        session.delete(session.query(DagRun).filter_by(dag_id=stored, run_id="manual__rpc").one())
    done = _run(
        [sys.executable, "-m", "fluid_airflow.cli", "gc", "--dag-id", stored, "--json"],
        _env(bound),
        hosts=network,
    )
    report = json.loads(done.stdout)
    assert report["reclaimed"]["objects"] == 4 and report["by_reason"]["run_deleted"]["objects"] == 4, report
    _assert_all_freed(workers)


def test_the_page_lists_and_releases_the_objects_and_every_copy_over_rpc(
    stored: str, bound: Path, network: Path, workers: LocalVineyardCluster
):
    """The handoffs page's API in the API server: it lists the run's objects and copies with every instance's
    memory (asked over RPC), then releases the run."""
    done = _play("page", stored, _env(bound), hosts=network)
    listed = done["listed"]
    assert [i["memory_usage"] > 0 for i in listed["instances"]] == [True, True], listed["instances"]
    (run,) = listed["runs"]
    assert len(run["objects"]) == 4, run
    assert done["status"] == 200 and done["released"]["objects"] == 4, done
    _assert_all_freed(workers)


def _cli_error(env: dict[str, str], *args: str) -> str:
    argv = [sys.executable, "-m", "fluid_airflow.cli", *args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and not done.stdout.strip(), (done.returncode, done.stdout, done.stderr)
    return done.stderr


def test_a_dataset_without_published_endpoints_is_named_with_the_fix(bound: Path, airflow_db):
    stderr = _cli_error(_env(bound, dataset=f"{NS}/nope"), "gc", "--dry-run")
    assert f"fluid-airflow gc: error: Airflow connection '{VINEYARD_CONN}' (dataset '{NS}/nope')" in stderr
    assert f"No ConfigMap {NS}/nope-rpc-conf" in stderr and "bind a VineyardRuntime to it" in stderr, stderr


def test_no_answering_worker_is_named_with_every_endpoint(bound: Path, control_plane: ControlPlane):  # noqa: F811
    """Nothing plays the workers' network here: every endpoint Fluid published is named with its cause."""
    names = rpc_conf(control_plane.core_v1(), NS, NAME)
    stderr = _cli_error(_env(bound), "release", "--dag-id", "fa_rpc_none", "--run-id", "manual__none")
    assert "vineyardd does not answer at " in stderr and "deploy/networkpolicy.yaml" in stderr, stderr
    assert all(f"rpc {name}: " in stderr for name in names), stderr
