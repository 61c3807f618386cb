"""DAG-level comparison: the flights DAG at each scale, with our backend and with object storage.

Each run is ``airflow dags test <dag> -c '{"scale": N}'`` (every task in one process, as in
``make demo``) against its own Airflow home (SQLite; one migrated DB copied per backend).
Per-task wall times come from Airflow's DB (``task_instance.start_date`` / ``end_date``); the
total is the DagRun's duration and the wall time of the whole command (incl. ~5 s start-up).

Both backends run ``flights_delay_regression_frames`` (``bench/dags/flights_frames.py``): the
tasks of ``dags/flights_delay_regression.py`` with DataFrame-only hand-offs, because that DAG
hands over an Arrow Table and ndarrays, which the object-storage backend cannot carry (the API
level shows the ``TypeError``). Ours also runs the DAG as written.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GiB = 1 << 30
FRAMES = "flights_delay_regression_frames"
ORIGINAL = "flights_delay_regression"
BACKENDS = {
    "vineyard": "fluid_airflow.vineyard.xcom.VineyardXComBackend",
    "objectstore-disk": "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend",
}
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
# Memory a run needs: a fixed part (Airflow, libraries) plus a part per unit of scale (bytes);
# measured at x3 (private memory + bytes held between tasks) and rounded up.
NEED_FIXED = 1.5 * GiB
NEED_PER_SCALE = {"vineyard": 0.6 * GiB, "objectstore-disk": 0.8 * GiB}
RESERVE = 2 * GiB
TIMEOUT = 900


@dataclass
class DagRun:
    """One ``airflow dags test`` run. Times in seconds, memory and files in bytes."""

    dag_id: str
    backend: str
    scale: int
    state: str = "not run"
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


def _parse(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts) if ts else None


def read_run(home: Path, dag_id: str, run: DagRun) -> None:
    """Fill ``run`` with the latest DagRun of ``dag_id`` in ``home``'s SQLite DB."""
    conn = sqlite3.connect(home / "airflow.db")
    try:
        row = conn.execute(
            "SELECT run_id, state, start_date, end_date FROM dag_run WHERE dag_id = ? "
            "ORDER BY id DESC LIMIT 1",
            (dag_id,),
        ).fetchone()
        if row is None:
            return
        run_id, run.state, start, end = row
        if start and end:
            run.run_s = (_parse(end) - _parse(start)).total_seconds()
        for task_id, state, t0, t1 in conn.execute(
            "SELECT task_id, state, start_date, end_date FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        ):
            run.task_states[task_id] = state or "none"
            if t0 and t1:
                run.tasks[task_id] = (_parse(t1) - _parse(t0)).total_seconds()
    finally:
        conn.close()


def _tree_anon(proc: psutil.Process) -> int:
    """Private (anonymous) resident bytes of ``proc`` and its descendants."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
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


class DagBench:
    """Runs the DAG-level comparison in a workspace (see :class:`bench.__main__.Workspace`)."""

    def __init__(self, ws: Any, vineyardd: Any) -> None:
        self.ws, self.vineyardd = ws, vineyardd
        self.dags = ws.disk / "dags"
        self.lib = ws.disk / "dag-lib"
        self.store = ws.disk / "dag-objectstore"
        self.logs = ws.disk / "dag-logs"

    def prepare(self) -> None:
        """DAGs folder, the original DAG file as an importable module, one migrated Airflow home
        copied per backend.

        The original file stays out of the DAGs folder: importing it defines its DAG too, which
        Airflow would report as a duplicate of the file's own.
        """
        self.dags.mkdir()
        self.lib.mkdir()
        self.logs.mkdir()
        (self.lib / "flights_delay_regression.py").symlink_to(REPO / "dags" / "flights_delay_regression.py")
        (self.dags / "flights_frames.py").symlink_to(REPO / "bench" / "dags" / "flights_frames.py")
        template = self.ws.disk / "home-template"
        self._airflow(["db", "migrate"], template, "vineyard", self.logs / "db-migrate.log", check=True)
        homes = [(FRAMES, b) for b in BACKENDS] + [(ORIGINAL, "vineyard")]
        for dag_id, backend in homes:  # the DB only: airflow.cfg names the template's paths
            self._home(dag_id, backend).mkdir()
            shutil.copy2(template / "airflow.db", self._home(dag_id, backend) / "airflow.db")

    def _home(self, dag_id: str, backend: str) -> Path:
        return self.ws.disk / f"home-{dag_id}-{backend}"

    def _env(self, home: Path, backend: str, dag_id: str) -> dict[str, str]:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            # The original DAG's own folder holds just its file; the frames DAG imports it from there.
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.lib if dag_id == ORIGINAL else self.dags),
            "AIRFLOW__CORE__XCOM_BACKEND": BACKENDS[backend],
            "AIRFLOW__FLUID__KEEP_FOR": "0",  # release a run's objects when it ends (the default)
            # Same inline limit as ours: small JSON stays in the DB row with either backend.
            "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{self.store}",
            "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "16384",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(self.lib),
        }
        return env

    def _held(self, backend: str) -> int:
        """Bytes the backend holds between tasks right now (vineyardd's use, or the files)."""
        if backend == "vineyard":
            return self.vineyardd.status().memory_usage or 0
        return _folder_bytes(self.store)

    def _airflow(
        self, args: list[str], home: Path, backend: str, log: Path, dag_id: str = FRAMES, check: bool = False
    ) -> tuple[int, float, int, int]:
        """Run the ``airflow`` CLI.

        :returns: exit code, wall seconds, peak private memory of its process tree (bytes,
            sampled every 0.2 s) and peak bytes held by the backend (sampled every 0.5 s).
        """
        start = time.monotonic()
        private = held = 0
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(BIN / "airflow"), *args],
                env=self._env(home, backend, dag_id),
                cwd=self.ws.disk,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            watched, ticks = psutil.Process(proc.pid), 0
            try:
                while proc.poll() is None:
                    private = max(private, _tree_anon(watched))
                    if ticks % 3 == 0 and args[0] == "dags":
                        held = max(held, self._held(backend))
                    if time.monotonic() - start > TIMEOUT:
                        proc.kill()
                    time.sleep(0.2)
                    ticks += 1
            finally:  # also on Ctrl-C: never leave an airflow process running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if check and proc.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed (exit {proc.returncode}); see {log}")
        return proc.returncode, time.monotonic() - start, private, held

    def run_one(self, dag_id: str, backend: str, scale: int) -> DagRun:
        """Run one DAG at one scale with one backend; skipped (with a note) if memory is short."""
        run = DagRun(dag_id, backend, scale)
        need = NEED_FIXED + NEED_PER_SCALE[backend] * scale
        available = psutil.virtual_memory().available
        if need > available - RESERVE:
            run.state = "skipped"
            run.note = f"needs ~{need / GiB:.1f} GiB, {available / GiB:.1f} GiB available"
            return run
        if backend == "vineyard":
            self.vineyardd.start(f"{max(2048, scale * 768 + 512)}Mi")
        log = self.logs / f"{dag_id}-{backend}-x{scale}.log"
        try:
            conf = json.dumps({"scale": scale})
            _, run.wall_s, run.peak_private, run.peak_held = self._airflow(
                ["dags", "test", dag_id, "-c", conf], self._home(dag_id, backend), backend, log, dag_id
            )
            read_run(self._home(dag_id, backend), dag_id, run)
            run.left_behind = self._held(backend)
        finally:
            if backend == "vineyard":
                self.vineyardd.stop()
            shutil.rmtree(self.store, ignore_errors=True)
        run.peak_held = max(run.peak_held or 0, run.left_behind or 0)
        if run.state != "success":
            run.note = _first_error(log)
        return run


def _first_error(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        if "Error:" in line or "Exception:" in line:
            return line.strip()[:240]
    return None


def run_dag_level(ws: Any, scales: tuple[int, ...], vineyardd: Any) -> list[DagRun]:
    """All DAG-level runs; prints one line per run."""
    bench = DagBench(ws, vineyardd)
    bench.prepare()
    runs = []
    plan = [(FRAMES, b, s) for s in scales for b in BACKENDS] + [(ORIGINAL, "vineyard", s) for s in scales]
    for dag_id, backend, scale in plan:
        run = bench.run_one(dag_id, backend, scale)
        runs.append(run)
        total = f"{run.run_s:.1f} s" if run.run_s is not None else "-"
        print(
            f"  {dag_id} x{scale} {backend}: {run.state}, run {total}"
            + (f" ({run.note})" if run.note else "")
        )
    return runs


def dag_tables(runs: list[DagRun]) -> list[str]:
    """Markdown: per-task seconds per backend and scale, totals, and notes."""
    if not runs:
        return []
    out = ["## DAG level: the flights DAG", "", *DAG_METHOD, ""]
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
        ("`airflow dags test` wall", [_num(r.wall_s) for r in group]),
        ("peak private memory (GiB)", [_gib(r.peak_private) for r in group]),
        ("peak held between tasks (GiB)", [_gib(r.peak_held) for r in group]),
        ("left behind after the run (GiB)", [_gib(r.left_behind) for r in group]),
        ("state", [r.state for r in group]),
    ]
    out += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    out.append("")
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
    "Seconds per task (from Airflow's DB) of one `airflow dags test` run each; every task runs in "
    "the one CLI process, and whichever task runs first (load_flights or load_weather) also pays "
    "~4 s of Airflow starting its in-process API. Object storage: `XComObjectStorageBackend` "
    "with `file://` on local disk and the same 16 KiB inline threshold as ours. *Peak private "
    "memory*: anonymous RSS of the `airflow dags test` process (sampled every 0.2 s). *Held "
    "between tasks*: bytes in vineyardd or in the object-storage folder (parquet inside JSON, so "
    "compressed). *Left behind*: what is still held after the run: ours releases a run's objects "
    "when it ends; object-storage files are only deleted when a task is retried or cleared.",
]
