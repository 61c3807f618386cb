"""``python -m bench`` (``make bench``): run both levels, write the report, print the final line.

Everything the run creates lives in three temporary folders (a short one in /tmp for the
vineyardd socket, one on local disk, one in /dev/shm) and in the Airflow deployments' own temporary
folders (``tests/deployment.py``), removed at the end, also on failure or Ctrl-C; every vineyardd,
worker and deployment started here is stopped by its own handle or process group.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
SIZES = [s * MiB for s in (1, 16, 256, 1024, 4096)]


@dataclass(frozen=True)
class Settings:
    """What to run (from ``BENCH_*`` environment variables, see :mod:`bench`)."""

    max_bytes: int
    quick: bool
    dag_scales: tuple[int, ...]
    out_dir: Path
    kinds: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()  # empty: all

    @property
    def sizes(self) -> list[int]:
        """Sizes of the API-level run, bytes."""
        if self.quick:
            return [s for s in (1 * MiB, 16 * MiB) if s <= self.max_bytes]
        return [s for s in SIZES if s <= self.max_bytes]


def settings_from_env() -> Settings:
    """Read ``BENCH_MAX``, ``BENCH_QUICK``, ``BENCH_DAG_SCALES`` and ``BENCH_OUT``."""
    from fluid_airflow.vineyard.local.resources import parse_size

    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    try:
        max_bytes = parse_size(os.environ.get("BENCH_MAX") or "4Gi")
    except ValueError as exc:
        raise SystemExit(
            f"bench: BENCH_MAX={os.environ.get('BENCH_MAX')!r} is not a size like 256Mi or 4Gi"
        ) from exc
    default_scales = "1" if quick else "1,10"
    scales_text = os.environ.get("BENCH_DAG_SCALES", default_scales)
    scales = tuple(int(s) for s in scales_text.replace(" ", "").split(",") if s)
    default_out = REPO / ("artifacts/bench-quick" if quick else "docs")
    from bench import data

    kinds = tuple(k for k in os.environ.get("BENCH_KINDS", "").replace(" ", "").split(",") if k)
    unknown = sorted(set(kinds) - set(data.KINDS))
    if unknown:
        raise SystemExit(f"bench: BENCH_KINDS has unknown kinds {unknown}; known: {', '.join(data.KINDS)}")
    out = Path(os.environ.get("BENCH_OUT") or default_out)
    peers = tuple(p for p in os.environ.get("BENCH_PEERS", "").replace(" ", "").split(",") if p)
    return Settings(max_bytes, quick, scales, out, kinds or data.KINDS, peers)


@dataclass(frozen=True)
class Workspace:
    """The run's temporary folders. ``runtime`` is short: a UNIX socket path must fit in 107 bytes."""

    runtime: Path  # vineyardd socket, pid, log
    disk: Path  # local disk: object storage, SQLite rows, Airflow homes
    shm: Path  # /dev/shm: object storage, pickle and Arrow files

    @classmethod
    def create(cls) -> Workspace:
        return cls(
            Path(tempfile.mkdtemp(prefix="fb-", dir="/tmp")),
            Path(tempfile.mkdtemp(prefix="fluid-bench-", dir="/var/tmp")),
            Path(tempfile.mkdtemp(prefix="fluid-bench-", dir="/dev/shm")),
        )

    def remove(self) -> None:
        for path in (self.runtime, self.disk, self.shm):
            shutil.rmtree(path, ignore_errors=True)


def configure_environment(ws: Workspace) -> None:
    """Airflow and fluid settings for this process and every worker (before Airflow is imported)."""
    os.environ.update(
        {
            "AIRFLOW_HOME": str(ws.disk / "airflow-home"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW__FLUID__RUNTIME_DIR": str(ws.runtime),
            "AIRFLOW__FLUID__VINEYARD_SOCKET": str(ws.runtime / "vineyard.sock"),
            "VINEYARD_IPC_SKIP_RETRY": "1",
        }
    )


def _interrupted(signum: int, frame: Any) -> None:
    raise SystemExit(f"bench: interrupted by signal {signum}; cleaning up")


def _cleanup(what: str, step: Any) -> None:
    try:
        step()
    except Exception as exc:
        print(f"bench: warning: {what} failed: {exc}", file=sys.stderr)


def main() -> int:
    started = time.monotonic()
    # SIGTERM (and SIGINT, also where a shell ignores it for background jobs) unwinds through
    # the finally below, which stops what was started and removes the folders.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    ws = Workspace.create()
    workers: list[Any] = []
    vineyardd = None
    try:
        configure_environment(ws)
        settings = settings_from_env()  # imports Airflow: after the environment is set

        from bench import report
        from bench.api_level import ApiBench
        from bench.measure import Worker
        from bench.peers import make_peers
        from fluid_airflow.vineyard.local.daemon import LocalVineyardd

        vineyardd = LocalVineyardd(ws.runtime)
        peers = make_peers(ws.disk, ws.shm)
        if settings.peers:
            peers = [p for p in peers if p.name in settings.peers or p.name == peers[0].name]
        rows = ws.disk / "xcom.db"
        producer, consumer = Worker("producer", peers, rows), Worker("consumer", peers, rows)
        workers += [producer, consumer]
        sizes = settings.sizes
        first, last = report.size_label(sizes[0]), report.size_label(sizes[-1])
        print(f"bench: XCom backend level, sizes {first} to {last}")
        api = ApiBench(peers, sizes, producer, consumer, vineyardd, quick=settings.quick)
        cases = api.run(settings.kinds)
        for worker in workers:
            worker.close()
        workers.clear()
        dag_runs: list = []
        if settings.dag_scales:
            from bench.dag_level import run_dag_level

            scales = ", ".join(f"x{s}" for s in settings.dag_scales)
            print(f"bench: DAG level, flights DAG at scale {scales}, real scheduler, one deployment per run")
            dag_runs = run_dag_level(ws, settings.dag_scales)
        from bench.cluster_level import run_cluster_level

        cluster_size = min(16 * MiB if settings.quick else 256 * MiB, settings.max_bytes)
        print(f"bench: cross-instance hand-off, 2-instance local cluster, {report.size_label(cluster_size)}")
        cluster_reads = run_cluster_level(ws, cluster_size)
        from bench.fluid_overhead import measure as measure_fluid_overhead

        print("bench: @task.fluid overhead over a plain @task, local backend, real scheduler")
        fluid_overhead = measure_fluid_overhead(runs=1 if settings.quick else 3)["overhead_s"]
        elapsed = time.monotonic() - started
        speedup = report.write(settings, peers, cases, dag_runs, elapsed, cluster_reads)
        from bench.dag_level import speedup_key

        keys = [*report.issue_keys(cases), speedup_key(dag_runs)]
    finally:  # every step, even if an earlier one fails
        for worker in workers:
            _cleanup(f"stopping the {worker.role} worker", worker.close)
        if vineyardd is not None:
            _cleanup("stopping vineyardd", vineyardd.stop)
        ws.remove()
    for line in keys:
        print(line)
    print(f"overhead_task_fluid_local_s={fluid_overhead}")
    print(f"speedup_1GiB_df_vs_objectstorage={speedup}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
