"""DAG-level comparison: the flights DAG at each scale, with our backend and with object storage,
each run under a real scheduler.

Every run gets a fresh Airflow deployment (``tests/deployment.py``'s ``Deployment``: api-server,
scheduler, dag-processor, triggerer, LocalExecutor with parallelism 4, SQLite, a vineyardd of its
own); the two backends' deployments differ only in ``[core] xcom_backend``. The run is triggered
through ``POST /api/v2/dags/{dag_id}/dagRuns`` with conf ``{"scale": N}`` and waited for through
``GET /api/v2/dags/{dag_id}/dagRuns/{run_id}``. Each task is its own process under the Task SDK
supervisor. Per-task seconds are the ``duration`` of ``GET .../taskInstances`` (Airflow 3.3.2):
from ``start_date``, stamped once the supervisor has forked the task process
(``airflow/sdk/execution_time/supervisor.py``, ``_on_child_started``), to ``end_date``, stamped
after the task pushed its result (``airflow/sdk/execution_time/task_runner.py``,
``_push_xcom_if_needed`` then ``SucceedTask(end_date=...)``). So a task's seconds include the
task process parsing the DAG file (importing pandas, pyarrow, the backend), pulling its inputs,
the function and pushing its output; not the scheduler's or executor's latency between tasks.

Both backends run ``flights_delay_regression_frames`` (``bench/dags/flights_frames.py``): the
tasks of ``dags/flights_delay_regression.py`` with DataFrame-only hand-offs, because that DAG
hands over an Arrow Table and ndarrays, which the object-storage backend cannot carry (the API
level shows the ``TypeError``). Ours also runs the DAG as written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
GiB = 1 << 30
FRAMES = "flights_delay_regression_frames"
ORIGINAL = "flights_delay_regression"
BACKENDS = {
    "vineyard": "fluid_airflow.vineyard.xcom.VineyardXComBackend",
    "objectstore-disk": "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend",
}
DAG_FILES = {FRAMES: REPO / "bench/dags/flights_frames.py", ORIGINAL: REPO / f"dags/{ORIGINAL}.py"}
TASKS = (
    "load_flights",
    "load_weather",
    "clean",
    "join_weather",
    "build_features",
    "split",
    "fit",
    "evaluate",
    "report",
)
#: The scale of issue 16's ``speedup_dag_x10_vs_objectstorage`` key.
KEY_SCALE = 10
# Memory a run needs: a fixed part (the deployment's four components, task processes, libraries)
# plus a part per unit of scale (bytes). Measured private + held: x1 2.1 + 0.3 GiB (either backend);
# x10 4.6 + 2.7 GiB (ours), 5.3 + 0.4 GiB (object storage); rounded up.
NEED_FIXED = 2.5 * GiB
NEED_PER_SCALE = {"vineyard": 0.6 * GiB, "objectstore-disk": 0.6 * GiB}
RESERVE = 2 * GiB
TIMEOUT = 900  # seconds a run may take once triggered
SETTLE = 30.0  # seconds given to the run-end release before "left behind" is read


@dataclass
class DagRun:
    """One DAG run on its own deployment. Times in seconds, memory and files in bytes."""

    dag_id: str
    backend: str
    scale: int
    state: str = "not run"
    startup_s: float | None = None
    wall_s: float | None = None
    run_s: float | None = None
    tasks: dict[str, float] = field(default_factory=dict)
    task_states: dict[str, str] = field(default_factory=dict)
    peak_private: int | None = None
    peak_held: int | None = None
    left_behind: int | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return asdict(self)


def _private(procs: list[psutil.Process]) -> int:
    """Private (anonymous) resident bytes of ``procs``."""
    total = 0
    for p in procs:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class _Sampler(threading.Thread):
    """Peak private memory of a deployment's processes (every 0.2 s) and peak bytes held by the
    backend (every 1 s) while a run goes on, beside the thread waiting for it."""

    def __init__(self, processes: Callable[[], list[psutil.Process]], held: Callable[[], int]) -> None:
        super().__init__(name="dag-bench-sampler", daemon=True)
        self.processes, self.held = processes, held
        self.peak_private = self.peak_held = 0
        self._done = threading.Event()

    def run(self) -> None:
        ticks = 0
        while not self._done.wait(0.2):
            self.peak_private = max(self.peak_private, _private(self.processes()))
            if ticks % 5 == 0:
                # vineyardd busy or gone: this sample is lost, not the run
                with contextlib.suppress(Exception):
                    self.peak_held = max(self.peak_held, self.held())
            ticks += 1

    def finish(self) -> None:
        self._done.set()
        self.join()


class DagBench:
    """Runs the DAG-level comparison in a workspace (see :class:`bench.__main__.Workspace`)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.lib = ws.disk / "dag-lib"
        self.store = ws.disk / "dag-objectstore"

    def prepare(self) -> None:
        """The original DAG file as an importable module for the frames DAG.

        It is not in the frames DAG's DAGs folder: importing it defines its DAG too, which Airflow
        would report as a duplicate of the file's own.
        """
        self.lib.mkdir()
        (self.lib / f"{ORIGINAL}.py").symlink_to(DAG_FILES[ORIGINAL])

    def _deployment(self, dag_id: str, backend: str, scale: int) -> Any:
        """A deployment (not started) for one run: one DAG file, one backend, vineyardd for ``scale``."""
        from bench import deployment_class

        inherited = os.environ.get("PYTHONPATH")
        env = {
            "AIRFLOW__CORE__XCOM_BACKEND": BACKENDS[backend],
            "AIRFLOW__FLUID__KEEP_FOR": "0",  # release a run's objects when it ends (the default)
            # Same inline limit as ours: small JSON stays in the DB row with either backend.
            "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{self.store}",
            "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "16384",
            "PYTHONPATH": os.pathsep.join([str(self.lib), *([inherited] if inherited else [])]),
        }
        # Both backends get the same deployment, vineyardd included (idle for object storage).
        size = f"{max(2048, scale * 768 + 512)}Mi"
        return deployment_class()(env, dag_files=[DAG_FILES[dag_id]], vineyard_size=size)

    def _held(self, deployment: Any, backend: str) -> int:
        """Bytes the backend holds between tasks right now (vineyardd's use, or the files)."""
        if backend == "vineyard":
            return deployment.vineyardd.status().memory_usage or 0
        return _folder_bytes(self.store)

    def _settled_held(self, deployment: Any, backend: str) -> int:
        """Bytes held once the run-end release had its chance: ours runs it in a child process
        of the scheduler that starts seconds after the run ends (``plugins/release_listener.py``).
        Read every second until nothing is held, at most :data:`SETTLE` seconds, for both backends.
        """
        deadline = time.monotonic() + SETTLE
        held = self._held(deployment, backend)
        while held and time.monotonic() < deadline:
            time.sleep(1)
            held = self._held(deployment, backend)
        return held

    def run_one(self, dag_id: str, backend: str, scale: int) -> DagRun:
        """Run one DAG at one scale with one backend on a fresh deployment; skipped (with a note)
        if memory is short, failed (with the reason in ``note``) if the deployment fails."""
        run = DagRun(dag_id, backend, scale)
        need = NEED_FIXED + NEED_PER_SCALE[backend] * scale
        available = psutil.virtual_memory().available
        if need > available - RESERVE:
            run.state = "skipped"
            run.note = f"needs ~{need / GiB:.1f} GiB, {available / GiB:.1f} GiB available"
            return run
        deployment = self._deployment(dag_id, backend, scale)
        try:
            started = time.monotonic()
            deployment.start()
            run.startup_s = time.monotonic() - started
            self._measure(deployment, run)
        except Exception as exc:  # the deployment's error (with its logs' tails) becomes the note
            run.state = "error" if run.state == "not run" else run.state
            run.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:240]}"
        finally:
            self._stop(deployment)
        return run

    def _measure(self, deployment: Any, run: DagRun) -> None:
        """Trigger the run through the REST API, wait for it while sampling memory, read its times."""
        deployment.wait_parsed(run.dag_id)
        sampler = _Sampler(deployment.processes, lambda: self._held(deployment, run.backend))
        sampler.start()
        try:
            started = time.monotonic()
            run_id = deployment.trigger(run.dag_id, {"scale": run.scale})
            run.state = deployment.wait_run(run.dag_id, run_id, timeout=TIMEOUT)
            run.wall_s = time.monotonic() - started
        finally:
            sampler.finish()
        run.peak_private = sampler.peak_private
        run.run_s = deployment.dag_run(run.dag_id, run_id).get("duration")
        for ti in deployment.task_instances(run.dag_id, run_id):
            run.task_states[ti["task_id"]] = str(ti["state"])
            if ti.get("duration") is not None:
                run.tasks[ti["task_id"]] = float(ti["duration"])
        run.left_behind = self._settled_held(deployment, run.backend)
        run.peak_held = max(sampler.peak_held, run.left_behind)
        if run.state != "success":
            run.note = _first_error(deployment.failed_logs(run.dag_id, run_id))

    def _stop(self, deployment: Any) -> None:
        from fluid_airflow.hooks.vineyard import close_clients

        # Our clients first: vineyardd ignores SIGTERM while one is connected (see close_clients).
        close_clients(str(deployment.vineyardd.socket_path))
        deployment.stop()
        for path in (deployment.home, deployment.runtime, self.store):
            shutil.rmtree(path, ignore_errors=True)


def _first_error(log: str) -> str | None:
    for line in log.splitlines():
        if "Error" in line or "Exception" in line:
            return line.strip()[:240]
    return log.strip()[:240] or None


def run_dag_level(ws: Any, scales: tuple[int, ...]) -> list[DagRun]:
    """All DAG-level runs, each on its own deployment; prints one line per run."""
    bench = DagBench(ws)
    bench.prepare()
    runs = []
    plan = [(FRAMES, b, s) for s in scales for b in BACKENDS] + [(ORIGINAL, "vineyard", s) for s in scales]
    for dag_id, backend, scale in plan:
        run = bench.run_one(dag_id, backend, scale)
        runs.append(run)
        total = f"{sum(run.tasks.values()):.1f} s" if run.tasks else "-"
        print(
            f"  {dag_id} x{scale} {backend}: {run.state}, sum of tasks {total}"
            + (f" ({run.note})" if run.note else "")
        )
    return runs


def speedup_key(runs: list[DagRun], scale: int = KEY_SCALE) -> str:
    """``speedup_dag_x10_vs_objectstorage=<ratio>``: the frames DAG at ``scale``, sum of the
    object-storage run's task seconds over ours (2 decimals); ``nan`` unless both succeeded."""
    found = {r.backend: r for r in runs if r.dag_id == FRAMES and r.scale == scale}
    ours, theirs = found.get("vineyard"), found.get("objectstore-disk")
    key = f"speedup_dag_x{scale}_vs_objectstorage"
    if not (ours and theirs and ours.state == theirs.state == "success" and ours.tasks and theirs.tasks):
        return f"{key}=nan"
    return f"{key}={sum(theirs.tasks.values()) / sum(ours.tasks.values()):.2f}"


def dag_tables(runs: list[DagRun]) -> list[str]:
    """Markdown: per-task seconds per backend and scale, totals, the key, and notes."""
    if not runs:
        return []
    out = ["## DAG level: the flights DAG under a real scheduler", "", *DAG_METHOD, ""]
    order = {FRAMES: 1, ORIGINAL: 0}
    group = sorted(runs, key=lambda r: (r.scale, r.backend != "vineyard", order[r.dag_id]))
    heads = [
        f"{r.backend}, {'as written' if r.dag_id == ORIGINAL else 'DataFrames'}, x{r.scale}" for r in group
    ]
    out += ["| task (s) | " + " | ".join(heads) + " |", "|---|" + "---|" * len(group)]
    for task in TASKS:
        out.append(f"| {task} | " + " | ".join(_cell(r, task) for r in group) + " |")
    rows = [
        ("**sum of tasks**", [_sum(r) for r in group]),
        ("**DagRun duration**", [_num(r.run_s) for r in group]),
        ("trigger to finished (REST)", [_num(r.wall_s) for r in group]),
        ("deployment start-up", [_num(r.startup_s) for r in group]),
        ("peak private memory (GiB)", [_gib(r.peak_private) for r in group]),
        ("peak held between tasks (GiB)", [_gib(r.peak_held) for r in group]),
        ("left behind after the run (GiB)", [_gib(r.left_behind) for r in group]),
        ("state", [r.state for r in group]),
    ]
    out += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    out += ["", f"`{speedup_key(runs)}` (target ≥ 2)", ""]
    out += [f"- {r.dag_id}, {r.backend}, x{r.scale}: {r.note}" for r in group if r.note]
    return [*out, ""]


def _cell(run: DagRun, task: str) -> str:
    if task in run.tasks:
        return f"{run.tasks[task]:.2f}"
    return run.task_states.get(task, "-")


def _sum(run: DagRun) -> str:
    return f"**{sum(run.tasks.values()):.1f}**" if run.tasks else "-"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


DAG_METHOD = [
    "`DataFrames` is `bench/dags/flights_frames.py`: the same task functions as "
    "`dags/flights_delay_regression.py` (*as written*), but every hand-off a DataFrame, since "
    "the object-storage backend cannot carry the Arrow table and ndarrays the original hands over. "
    "Each run has a fresh Airflow deployment of its own (`tests/deployment.py`: api-server, scheduler, "
    "dag-processor, triggerer, LocalExecutor with parallelism 4, SQLite) that differs between the "
    "backends only in `[core] xcom_backend`; the run is triggered with `POST /api/v2/dags/{dag_id}/"
    'dagRuns` (conf `{"scale": N}`) and waited for through the REST API. Every task is its own '
    "process under Airflow's supervisor. Seconds per task are the task instances' `duration` from "
    "the REST API: from when the supervisor has forked the task process to when the task has pushed "
    "its result, so each includes the task process importing the DAG file (pandas, pyarrow, the "
    "backend), pulling its inputs, running, pushing its output. *DagRun duration* adds the "
    "scheduler's and executor's gaps between tasks; *trigger to finished* is what the REST client "
    "waited (polling every 1.5 s). Object storage: `XComObjectStorageBackend` with `file://` on "
    "local disk and the same 16 KiB inline threshold as ours. *Peak private memory*: anonymous RSS "
    "summed over the deployment's processes (components, executor workers, supervisors, tasks; "
    "sampled every 0.2 s; vineyardd's shared memory is not in it). *Held between tasks*: bytes in "
    "vineyardd or in the object-storage folder (parquet inside JSON, so compressed). *Left behind*: "
    "what is still held after the run: ours releases a run's objects when it ends; object-storage "
    "files are only deleted when a task is retried or cleared.",
]
