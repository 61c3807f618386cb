"""Shared fixtures: a real vineyardd and a real Airflow (SQLite) for the whole test session.

Airflow reads its configuration when first imported, so the environment is set here, at
import time, before any test module imports ``airflow``. Every daemon started here is stopped
by process id at the end of the session; temporary folders are removed.
"""

from __future__ import annotations

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
}
os.environ.update(AIRFLOW_ENV)


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
    from fluid_airflow.vineyard.daemon import LocalVineyardd

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
    from fluid_airflow.vineyard.daemon import LocalVineyardd

    path = Path(tempfile.mkdtemp(prefix="fa-", dir="/tmp"))
    try:
        yield path
    finally:
        pid = LocalVineyardd(path).pid()
        LocalVineyardd(path).stop(timeout=5)
        if pid:
            gone(pid)
        remove_and_check_nothing_runs(path)


def remove_and_check_nothing_runs(path: Path) -> None:
    """Kill any process still naming ``path``, remove the folder, then fail if one was found."""
    leaked = processes_naming(str(path))
    for proc in leaked:
        proc.kill()
        gone(proc.pid)
    shutil.rmtree(path, ignore_errors=True)
    assert not leaked, f"processes left running in {path}: {[p.pid for p in leaked]}"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)
    shutil.rmtree(_RUNTIME, ignore_errors=True)
