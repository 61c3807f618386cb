"""A real Airflow deployment for tests: api-server, scheduler, dag-processor and triggerer.

What a user runs, on this machine: LocalExecutor (every task is its own process under the Task SDK
supervisor, with the supervisor's environment: no DB access, server process context), SQLite in a
fresh ``AIRFLOW_HOME``, a vineyardd of its own (``LocalVineyardd``, 2 GiB unless told otherwise) that
``[fluid]`` points at, the simple auth manager with JWT tokens, runs triggered and cleared through the
REST API. ``bench/`` runs its real-scheduler benchmarks on it too (bench imports this module, never
the reverse).

Every process is started in its own session (process group) and stopped by that group's id;
its output is kept in ``<home>/logs/<component>.log`` and tailed into assertion messages.

Typical use (the ``deployment`` fixture in ``conftest.py`` starts one per test session)::

    run_id = deployment.trigger("fa_mapped")
    assert deployment.wait_run("fa_mapped", run_id) == "success"
    deployment.task_states("fa_mapped", run_id)  # {("produce", 0): "success", ...}

REST endpoints used are those of Airflow 3.3.2's public API (``airflow/api_fastapi/core_api/
routes/public/``: ``dag_run.py``, ``task_instances.py``, ``log.py``) and ``POST /auth/token`` of
the simple auth manager (``api_fastapi/auth/managers/simple/routes/login.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BACKEND = "fluid_airflow.vineyard.xcom.VineyardXComBackend"
USERS = {"admin": "admin", "viewer": "viewer"}  # user -> role
PASSWORDS = {"admin": "admin-pass", "viewer": "viewer-pass"}
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
FINISHED = ("success", "failed")
LOCAL_FLUID = {"conn_type": "fluid", "extra": {"backend": "local", "local_max_cache": "256Mi"}}


class DeploymentError(AssertionError):
    """The deployment did not do what a test waited for; the message ends with the logs' tails."""


def _free_port() -> int:
    from fluid_airflow.vineyard.local.etcd import free_port

    return free_port()


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Deployment:
    """One Airflow deployment on loopback ports. Build with extra ``env``, then :meth:`start`.

    :param dag_files: the files the DAGs folder holds (as symlinks); default: every ``.py`` of
        ``dags/`` and ``tests/dags/``.
    :param vineyard_size: the vineyardd's shared memory (``2Gi``, ``8192Mi``: see ``parse_size``).
    :param env: settings on top of the defaults below, e.g. ``{"AIRFLOW__FLUID__KEEP_FOR": "3600"}``
        or another ``AIRFLOW__CORE__XCOM_BACKEND``.
        Defaults: LocalExecutor, parallelism 4, DAGs unpaused at creation, the VineyardXComBackend,
        ``[fluid]`` pointing at this deployment's vineyardd, provider defaults for everything else
        (as users run it: ``[fluid] keep_for`` is 0, so runs are released at run end, and small
        arrays and DataFrames stay inline), and the ``fluid_default``
        connection on the local backend (256 MiB per Dataset).

    Attributes: ``home`` (AIRFLOW_HOME, also holding ``logs/``), ``runtime`` (vineyardd's folder),
    ``vineyardd`` (a ``LocalVineyardd``), ``base_url``, ``env`` (the environment every process
    runs with: use it to run ``fluid-airflow gc`` or ``airflow ...`` as the deployment would),
    ``token`` (admin's JWT).
    """

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        dag_files: Iterable[Path] | None = None,
        vineyard_size: str = "2Gi",
    ) -> None:
        from fluid_airflow.vineyard.local.daemon import LocalVineyardd

        self.home = Path(tempfile.mkdtemp(prefix="fa-dep-"))
        # Short: the vineyardd socket path must fit in 107 bytes.
        self.runtime = Path(tempfile.mkdtemp(prefix="fa-", dir="/tmp"))
        self.vineyardd = LocalVineyardd(self.runtime)
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.vineyard_size = vineyard_size
        if dag_files is None:
            dag_files = [*sorted((REPO / "dags").glob("*.py")), *sorted((REPO / "tests/dags").glob("*.py"))]
        self.env = self._environment(env or {}, dag_files)
        self.token = ""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._parsed: set[str] = set()

    def _environment(self, extra: dict[str, str], dag_files: Iterable[Path]) -> dict[str, str]:
        dags = self.home / "dags"
        dags.mkdir()
        for dag_file in dag_files:
            (dags / dag_file.name).symlink_to(dag_file)
        (self.home / "logs").mkdir()
        (self.home / "passwords.json").write_text(json.dumps(PASSWORDS))
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "VINEYARD"))
        }
        return {
            **inherited,
            "PATH": f"{BIN}{os.pathsep}{inherited.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__XCOM_BACKEND": BACKEND,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": "fluid-airflow-deployment-test",
            "AIRFLOW__API_AUTH__JWT_SECRET": "fluid-airflow-deployment-test-secret",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # DAG files do not change during a test session: parse each once, not every 30 s, so an
            # idle deployment leaves the 2 cores to the tests running beside it.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            # The log servers bind every interface (no host option in 3.3.2): free ports at least.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__FLUID__RUNTIME_DIR": str(self.runtime),
            "AIRFLOW__FLUID__VINEYARD_SOCKET": str(self.vineyardd.socket_path),
            "AIRFLOW_CONN_FLUID_DEFAULT": json.dumps(LOCAL_FLUID),
            **extra,
        }

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 240.0) -> Deployment:
        """Start vineyardd, migrate the DB, start the four components, wait until all are healthy.

        :raises DeploymentError: a component exited or the health endpoint did not report every
            component healthy within ``timeout`` seconds.
        """
        self.vineyardd.start(self.vineyard_size)
        migrate = subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"], env=self.env, capture_output=True, text=True
        )
        if migrate.returncode:
            raise DeploymentError(f"airflow db migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
        for component in COMPONENTS:
            log = open(self.log_path(component), "wb")  # noqa: SIM115 - the child keeps it open
            try:
                self._procs[component] = subprocess.Popen(
                    [str(BIN / "airflow"), component], env=self.env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home,
                )  # fmt: skip
            finally:
                log.close()
        self._wait(self._healthy, timeout, "every component healthy in /api/v2/monitor/health")
        self.token = self.login("admin")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM each component's process group, SIGKILL what is left after ``timeout``; stop
        vineyardd. Idempotent. The home (with its logs) is left for the caller to remove."""
        # Task processes run in process groups of their own (task-sdk 1.3.2 supervisor.py setpgid):
        # remember every descendant so none outlives the deployment.
        descendants = [c for p in self._procs.values() for c in _children(p.pid)]
        for proc in self._procs.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self._procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(10)
            _signal_group(proc.pid, signal.SIGKILL)  # children left in the group (task processes)
        self._procs.clear()
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()
                child.wait(10)
        self.vineyardd.stop(timeout=10)

    def processes(self) -> list[psutil.Process]:
        """The components' processes and their descendants (executor workers, task supervisors,
        task processes) as they are now; vineyardd is not one of them."""
        found = []
        for proc in self._procs.values():
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(proc.pid))
            found += _children(proc.pid)
        return found

    def log_path(self, component: str) -> Path:
        """``<home>/logs/<component>.log``: the component's stdout and stderr."""
        return self.home / "logs" / f"{component}.log"

    def tails(self, components: tuple[str, ...] = COMPONENTS, lines: int = 30) -> str:
        """The last ``lines`` lines of each component's log, for assertion messages."""
        return "\n".join(
            f"--- {c} ({self.log_path(c)}) ---\n{_tail(self.log_path(c), lines)}" for c in components
        )

    def _alive(self) -> None:
        for component, proc in self._procs.items():
            if proc.poll() is not None:
                raise DeploymentError(
                    f"airflow {component} exited with {proc.returncode}:\n{self.tails((component,), 60)}"
                )

    def _wait(self, done: Any, timeout: float, what: str, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            with contextlib.suppress(OSError):
                result = done()
                if result:
                    return result
            if time.monotonic() > deadline:
                raise DeploymentError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.tails()}")
            time.sleep(interval)

    def _healthy(self) -> bool:
        status, body = self.request("GET", "/api/v2/monitor/health", auth=False)
        return status == 200 and all(
            (body.get(part) or {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    # -- REST ----------------------------------------------------------------------------------
    def login(self, user: str) -> str:
        """A JWT for ``user`` (``admin`` or ``viewer``) from ``POST /auth/token``."""
        status, body = self.request(
            "POST", "/auth/token", {"username": user, "password": PASSWORDS[user]}, auth=False
        )
        if status not in (200, 201):
            raise DeploymentError(f"login of {user!r} failed: {status} {body}")
        return str(body["access_token"])

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        auth: bool = True,
        accept: str = "application/json",
    ) -> tuple[int, Any]:
        """One HTTP request to the api-server: ``(status, decoded JSON body or text)``.

        ``token`` defaults to admin's; ``auth=False`` sends none. HTTP errors are returned, not
        raised; connection errors raise ``OSError``.
        """
        headers = {"Content-Type": "application/json", "Accept": accept}
        if auth:
            headers["Authorization"] = f"Bearer {token or self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode(errors="replace")

    def _ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.request(method, path, body)
        if status not in (200, 201, 204):
            raise DeploymentError(f"{method} {path} -> {status}: {answer}")
        return answer

    def wait_parsed(self, dag_id: str, timeout: float = 180.0) -> None:
        """Wait until the dag-processor has serialized ``dag_id``.

        :raises DeploymentError: not within ``timeout`` s; the message lists the import errors.
        """
        if dag_id in self._parsed:
            return
        try:
            self._wait(lambda: self.request("GET", f"/api/v2/dags/{dag_id}")[0] == 200, timeout, dag_id, 2)
        except DeploymentError as exc:
            errors = self.request("GET", "/api/v2/importErrors")[1]
            raise DeploymentError(f"DAG {dag_id} not parsed; import errors: {errors}\n{exc}") from None
        self._parsed.add(dag_id)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a run through ``POST /api/v2/dags/{dag_id}/dagRuns`` (no logical date, as the UI's
        trigger button does), after waiting for the DAG to be parsed. Returns the run id."""
        self.wait_parsed(dag_id)
        body = {"logical_date": None, "conf": conf or {}}
        for _ in range(5):  # SQLite: a write can meet "database is locked" while the scheduler writes
            status, run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
            if status != 500 or "Database error" not in str(run):
                break
            time.sleep(2)
        if status not in (200, 201):
            raise DeploymentError(f"POST /api/v2/dags/{dag_id}/dagRuns -> {status}: {run}")
        return str(run["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The run as the REST API returns it (``state``, ``start_date``, ``end_date``, ``duration``
        in seconds, ...; ``DAGRunResponse`` of ``api_fastapi/core_api/datamodels/dag_run.py``)."""
        return dict(self._ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}"))

    def run_state(self, dag_id: str, run_id: str) -> str:
        """The run's current state (``queued``, ``running``, ``success``, ``failed``)."""
        return str(self.dag_run(dag_id, run_id)["state"])

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300.0) -> str:
        """Wait until the run is ``success`` or ``failed``; return that state.

        :raises DeploymentError: still unfinished after ``timeout`` s (message: task states, logs).
        """
        return self._wait_state(dag_id, run_id, lambda: self.run_state(dag_id, run_id), FINISHED, timeout)

    def wait_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: tuple[str, ...] = ("success", "failed", "upstream_failed", "skipped"),
        *,
        map_index: int = -1,
        timeout: float = 300.0,
    ) -> str:
        """Wait until task ``task_id`` (``map_index``) of the run is in one of ``states``; return it."""

        def state() -> str:
            return self.task_states(dag_id, run_id).get((task_id, map_index), "none")

        return self._wait_state(dag_id, run_id, state, states, timeout)

    def _wait_state(
        self, dag_id: str, run_id: str, read: Any, states: tuple[str, ...], timeout: float
    ) -> str:
        try:
            return str(
                self._wait(lambda: (s := read()) in states and s, timeout, f"{states} in {run_id}", 1.5)
            )
        except DeploymentError as exc:
            raise DeploymentError(f"task states: {self.task_states(dag_id, run_id)}\n{exc}") from None

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances as the REST API returns them (``task_id``, ``map_index``,
        ``state``, ``try_number``, ``start_date``, ...)."""
        body = self._ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances?limit=1000")
        return list(body["task_instances"])

    def task_states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str]:
        """``{(task_id, map_index): state}`` of the run (``"None"`` for a task not yet scheduled)."""
        return {
            (ti["task_id"], ti["map_index"]): str(ti["state"]) for ti in self.task_instances(dag_id, run_id)
        }

    def failed_logs(self, dag_id: str, run_id: str) -> str:
        """The task logs of the run's failed tasks (every try, last 2,000 characters each), for an
        assertion message; the task states when none failed."""
        found = []
        for ti in self.task_instances(dag_id, run_id):
            if ti.get("state") == "failed":
                for n in range(1, int(ti.get("try_number") or 1) + 1):
                    log = self.task_log(dag_id, run_id, ti["task_id"], n)[-2000:]
                    found.append(f"--- {ti['task_id']} try {n}\n{log}")
        return "\n".join(found) or str(self.task_states(dag_id, run_id))

    def vineyard_client(self, timeout: float = 5.0) -> Any:
        """A vineyard client of the deployment's own vineyardd (IPC socket)."""
        from fluid_airflow.hooks.vineyard import VineyardHook

        return VineyardHook(ipc_socket=str(self.vineyardd.socket_path), timeout=timeout).get_conn()

    def clear(
        self,
        dag_id: str,
        run_id: str,
        task_ids: list[str | tuple[str, int]],
        *,
        include_downstream: bool = True,
        only_failed: bool = False,
    ) -> list[tuple[str, int]]:
        """Clear tasks of one run through ``POST /api/v2/dags/{dag_id}/clearTaskInstances`` (what
        the UI's Clear button sends); returns the cleared ``(task_id, map_index)`` pairs."""
        body = {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [list(t) if isinstance(t, tuple) else t for t in task_ids],
            "include_downstream": include_downstream,
            "only_failed": only_failed,
            "reset_dag_runs": True,
        }
        answer = self._ok("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances", body)
        return [(ti["task_id"], ti["map_index"]) for ti in answer["task_instances"]]

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The task log (one line per event: ``level event key=value ...``) as the UI shows it,
        from ``GET .../taskInstances/{task_id}/logs/{try_number}``; works while the task runs."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/{task_id}/logs/{try_number}"
            f"?full_content=true&map_index={map_index}"
        )
        return "\n".join(_log_line(item) for item in self._ok("GET", path).get("content") or [])

    def xcom_rows(self, dag_id: str, run_id: str) -> dict[tuple[str, int, str], Any]:
        """``{(task_id, map_index, key): value}`` of the run's XCom rows, read from the SQLite file
        (read-only): the JSON Airflow stored, decoded (a reference dict for values in Vineyard)."""
        db = sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=30)
        try:
            rows = db.execute(
                "SELECT task_id, map_index, key, value FROM xcom WHERE dag_id = ? AND run_id = ?",
                (dag_id, run_id),
            ).fetchall()
        finally:
            db.close()
        # The column is declared JSON, which gives it NUMERIC affinity in SQLite: JSON numbers come
        # back as int/float, everything else as its JSON text.
        return {(t, m, k): json.loads(v) if isinstance(v, str) else v for t, m, k, v in rows}

    def airflow(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` (or ``fluid-airflow`` when ``args[0]`` is it) with :attr:`env`."""
        command = (
            [str(BIN / args[0]), *args[1:]] if args[0] == "fluid-airflow" else [str(BIN / "airflow"), *args]
        )
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)


def _q(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


# Keys every line of a task log carries; left out of task_log()'s lines.
_LOG_CONTEXT = {
    "event",
    "timestamp",
    "level",
    "try_number",
    "map_index",
    "dag_id",
    "run_id",
    "task_id",
    "ti_id",
}
_LOG_CONTEXT |= {"filename", "lineno"}


def _log_line(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    rest = " ".join(f"{k}={v}" for k, v in item.items() if k not in _LOG_CONTEXT)
    return f"{item.get('timestamp', '')} {item.get('level', '')} {item.get('event', '')} {rest}".strip()


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
