"""Shared fixtures: a real vineyardd and a real Airflow (SQLite) for the whole test session.

Airflow reads its configuration when first imported, so the environment is set here, at
import time, before any test module imports ``airflow``. Every daemon started here is stopped
by process id at the end of the session; temporary folders are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BACKEND = "fluid_airflow.vineyard.xcom.VineyardXComBackend"

# Short paths: a UNIX socket path must fit in 107 bytes.
_HOME = Path(tempfile.mkdtemp(prefix="fa-home-"))
_RUNTIME = Path(tempfile.mkdtemp(prefix="fa-", dir="/tmp"))
_DAGS = _HOME / "dags"
_DAGS.mkdir()
for dag_file in [*sorted((REPO / "dags").glob("*.py")), *sorted((REPO / "tests" / "dags").glob("*.py"))]:
    (_DAGS / dag_file.name).symlink_to(dag_file)

AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(_DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__XCOM_BACKEND": BACKEND,
    "AIRFLOW__FLUID__RUNTIME_DIR": str(_RUNTIME),
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    # Most tests inspect a run's objects after it ends; tests of release-at-run-end set 0.
    "AIRFLOW__FLUID__KEEP_FOR": "-1",
    # Test values are tiny, and most tests are about what Vineyard does with them: 0 sends every
    # array and DataFrame there; tests of inline values set the floor themselves.
    "AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR": "0",
}
os.environ.update(AIRFLOW_ENV)

#: Test files that need the real Kubernetes control plane (scripts/test.sh runs them beside the others).
CONTROL_PLANE_FILES = ("test_controlplane.py", "test_k8s_")
#: Fixtures that start something real: a daemon, Airflow's DB, a deployment, the control plane.
INTEGRATION_FIXTURES = frozenset(
    {
        "vineyardd", "vineyard_client", "airflow_db", "dagbag", "run_dag", "runtime", "deployment",
        "make_deployment", "cluster", "control_plane",
    }
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it needs, so that ``-m "not integration"`` is the fast unit tests alone:
    ``controlplane`` (the real Kubernetes control plane), ``integration`` (anything real started: these,
    deployment tests, tests using a daemon fixture, and modules that mark themselves)."""
    for item in items:
        if item.path.name.startswith(CONTROL_PLANE_FILES):
            item.add_marker(pytest.mark.controlplane)
        uses = set(getattr(item, "fixturenames", ()))
        if (
            item.get_closest_marker("controlplane")
            or item.get_closest_marker("deployment")
            or uses & INTEGRATION_FIXTURES
        ):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _kubernetes_default_configuration():
    """cncf-kubernetes' KubernetesHook loads a kubeconfig into the kubernetes client's
    process-wide default Configuration; restore it so no test sees another test's API server."""
    from kubernetes import client

    saved = client.Configuration.get_default_copy()
    yield
    client.Configuration.set_default(saved)


@pytest.fixture(scope="session")
def vineyardd():
    """A local vineyardd (2 GiB, ``--meta local``, no RPC) in the session's runtime dir."""
    from fluid_airflow.vineyard.local.daemon import LocalVineyardd

    daemon = LocalVineyardd(_RUNTIME)
    daemon.start("2Gi")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def vineyard_client(vineyardd):
    """This process's Vineyard client for the session's vineyardd."""
    from fluid_airflow.vineyard.xcom import backend_hook

    return backend_hook().get_conn()


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated SQLite metadata DB in the session's AIRFLOW_HOME."""
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], check=True, capture_output=True, env=os.environ)
    return _HOME


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(_DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture
def run_dag(dagbag, vineyardd):
    """Run a DAG of the test DAGs folder with ``dag.test()`` and return its DagRun."""

    def run(dag_id: str, conf: dict | None = None):
        return dagbag.get_dag(dag_id).test(run_conf=conf)

    return run


def xcom_rows(dag_id: str, run_id: str) -> list:
    """The XCom rows (``XComModel``) of one DAG run, straight from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == run_id).all()
        session.expunge_all()
        return rows


def delete_xcom(dag_run, task_id: str, key: str, map_index: int = -1) -> None:
    """Delete one XCom row the way the UI/REST API does: in the DB only, no backend purge."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        deleted = session.execute(
            delete(XComModel).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == key,
            )
        ).rowcount
    assert deleted == 1


def assert_inline_rows(got: dict) -> None:
    """The XCom rows of a successful ``fa_inline`` run, as stored (``{(task, map index, key): JSON}``)."""
    from fluid_airflow.vineyard.data import inline, tree
    from fluid_airflow.vineyard.data.reference import is_reference

    assert got[("check", -1, "return_value")] == dict.fromkeys(
        ("frame", "arr", "x", "y", "everything", "twice"), True
    )
    frame, arr = got[("small_frame", -1, "return_value")], got[("small_array", -1, "return_value")]
    assert inline.is_inline(frame) and frame["summary"].startswith("pandas.DataFrame 3 x 4, ")
    assert inline.is_inline(arr) and arr["values"] == [float(i) for i in range(10)]
    assert arr["summary"] == "numpy.ndarray float64 10, 80 B inline"
    assert is_reference(got[("split", -1, "X")]) and inline.is_inline(got[("split", -1, "y")])
    whole = got[("split", -1, "return_value")]
    assert list(whole)[:2] == ["summary", tree.TREE_MARKER]
    assert whole["summary"].startswith(
        "dict of 3: X numpy.ndarray float64 2000 x 4, 62.50 KiB in Vineyard; y "
    )
    assert whole["summary"].endswith("; n=3")
    # The tree reuses the per-key object of X (no second copy) and holds y inline.
    assert tree.tree_refs(whole)[0]["object_id"] == got[("split", -1, "X")]["object_id"]
    assert inline.is_inline(got[("doubled", -1, "return_value")])  # from the @task.fluid runner


def only_event(trigger) -> dict:
    """Run a :class:`FluidDatasetTrigger` to its end; it must yield exactly one event, for its Dataset."""
    import asyncio

    async def events() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    found = asyncio.run(events())
    assert len(found) == 1, found
    assert (found[0]["namespace"], found[0]["dataset_name"]) == (trigger.namespace, trigger.dataset_name)
    return found[0]


def task_states(dag_run) -> dict[tuple[str, int], str]:
    """``{(task_id, map_index): state}`` of a DagRun returned by ``dag.test()``."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in tis}


def processes_naming(text: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line mentions ``text``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in arg for arg in proc.info["cmdline"] or []) and proc.status() != "zombie":
                found.append(proc)
        except psutil.Error:
            continue
    return found


def in_object(client, db_value, address: int) -> bool:
    """True when ``address`` lies in the shared memory of the object behind ``db_value`` (its
    reference row): a zero-copy view. A table is one IPC-stream blob whose columns are slices of
    it; an array is its own blob."""
    import vineyard

    from fluid_airflow.vineyard.client import arrow_stream

    obj = client.get_object(vineyard.ObjectID(db_value["object_id"]))
    if obj.typename != arrow_stream.TYPENAME:
        return bool(client.is_shared_memory(address))
    blob = obj.member(arrow_stream.MEMBER)
    return bool(client.is_shared_memory(blob.address)) and blob.address <= address < blob.address + blob.size


def gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` has exited (reaping it when it is our child)."""
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.fixture
def runtime():
    """A short fresh runtime dir; afterwards its daemon is stopped and nothing may be left running."""
    from fluid_airflow.vineyard.local.daemon import LocalVineyardd

    path = Path(tempfile.mkdtemp(prefix="fa-", dir="/tmp"))
    try:
        yield path
    finally:
        pid = LocalVineyardd(path).pid()
        LocalVineyardd(path).stop(timeout=5)
        if pid:
            gone(pid)
        remove_and_check_nothing_runs(path)


@pytest.fixture
def rpc_vineyardd(runtime, free_tcp_port):
    """A vineyardd (64 MiB) also serving RPC on a free port: ``.port``, ``.socket_path`` (its IPC socket) and
    ``.daemon``. vineyardd binds the port on every interface: test data only."""
    from types import SimpleNamespace

    from fluid_airflow.vineyard.local.daemon import LocalVineyardd

    daemon = LocalVineyardd(runtime)
    daemon.start("64Mi", rpc_port=free_tcp_port, allow_public_rpc=True)
    try:
        yield SimpleNamespace(daemon=daemon, port=free_tcp_port, socket_path=daemon.socket_path)
    finally:
        daemon.stop()


@contextlib.contextmanager
def local_cluster(instances: int, prefix: str):
    """A :class:`LocalVineyardCluster` of ``instances`` vineyardd (256 MiB, RPC, one shared etcd) in a
    fresh short folder; stopped at the end, and nothing of it may be left running."""
    from fluid_airflow.vineyard.local.cluster import LocalVineyardCluster

    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    cluster = LocalVineyardCluster(path, instances=instances)
    cluster.start("256Mi")
    try:
        yield cluster
    finally:
        cluster.stop(timeout=5)
        remove_and_check_nothing_runs(path)


def remove_and_check_nothing_runs(path: Path) -> None:
    """Kill any process still naming ``path``, remove the folder, then fail if one was found."""
    leaked = processes_naming(str(path))
    for proc in leaked:
        proc.kill()
        gone(proc.pid)
    shutil.rmtree(path, ignore_errors=True)
    assert not leaked, f"processes left running in {path}: {[p.pid for p in leaked]}"


def _started(env: dict[str, str]):
    """Start a :class:`deployment.Deployment` with ``env``; the stopper checks nothing is left."""
    from deployment import Deployment

    from fluid_airflow.hooks.vineyard import close_clients

    instance = Deployment(env)
    try:
        instance.start()
    except BaseException:
        _stop(instance, close_clients)
        raise
    return instance, lambda: _stop(instance, close_clients)


def _stop(instance, close_clients) -> None:
    # Our own clients first: vineyardd ignores SIGTERM while one is connected (hooks/vineyard.py
    # close_clients), and the stop would wait 10 s for its SIGKILL.
    close_clients(str(instance.vineyardd.socket_path))
    instance.stop()
    remove_and_check_nothing_runs(instance.runtime)
    remove_and_check_nothing_runs(instance.home)


@pytest.fixture(scope="session")
def deployment():
    """A real Airflow deployment for the whole session (see ``tests/deployment.py``): api-server,
    scheduler, dag-processor, triggerer, LocalExecutor, SQLite, its own vineyardd; provider
    defaults, as users run it (``[fluid] keep_for`` = 0, the default inline floor). Tests that need
    other settings use ``make_deployment``."""
    instance, stop = _started({})
    try:
        yield instance
    finally:
        stop()


@pytest.fixture(scope="module")
def make_deployment():
    """Factory: ``make_deployment(AIRFLOW__FLUID__KEEP_FOR="3600")`` starts a deployment with
    those settings on top of the defaults; every one started is stopped when the module ends."""
    stoppers = []

    def make(**env: str):
        instance, stop = _started(env)
        stoppers.append(stop)
        return instance

    try:
        yield make
    finally:
        for stop in reversed(stoppers):
            stop()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)
    shutil.rmtree(_RUNTIME, ignore_errors=True)


class XComRow:
    """An XCom row as Airflow hands it to ``purge``: its scope fields and its DB value."""

    def __init__(self, value, *, key: str | None = None, **scope):
        self.value = value
        self.key = key
        self.dag_id = scope.get("dag_id")
        self.run_id = scope.get("run_id")
        self.task_id = scope.get("task_id")
        self.map_index = scope.get("map_index", -1)


def own_row(db_value, key: str | None = None) -> XComRow:
    """The XCom row that really holds ``db_value`` (a reference or tree): scope from its name."""
    import json as _json

    from fluid_airflow.vineyard.data.naming import split_xcom_object_name
    from fluid_airflow.vineyard.data.reference import is_reference
    from fluid_airflow.vineyard.data.tree import tree_refs

    value = _json.loads(db_value) if isinstance(db_value, str) else db_value
    ref = value if is_reference(value) else tree_refs(value)[0]
    parts = split_xcom_object_name(ref["name"])
    row_key = key or str(parts["key"])
    return XComRow(
        db_value, key=row_key, **{k: parts[k] for k in ("dag_id", "run_id", "task_id", "map_index")}
    )


def held_in(daemon) -> tuple[int, int, int]:
    """``(bytes used, objects listed, names)`` in a ``LocalVineyardd``, asked through a fresh hook.

    ``list_metadatas`` lists every sealed blob and object; ``memory_usage`` also counts unsealed
    blobs, which no listing shows: ``(0, 0, 0)`` means nothing at all is left.
    """
    from fluid_airflow.hooks.vineyard import VineyardHook

    client = VineyardHook(ipc_socket=str(daemon.socket_path), timeout=5).get_conn()
    return (
        int(client.status.memory_usage),
        len(client.list_metadatas("*", limit=100_000)),
        len(client.list_names("*", limit=100_000)),
    )
