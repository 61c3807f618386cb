"""Benchmarks of fluid-airflow's Vineyard XCom backend against what users would pick instead.

``make bench`` (``python -m bench``) runs, in one process tree and one run:

1. the XCom-backend-level comparison (:mod:`bench.api_level`): every peer of
   :mod:`bench.peers` hands every value of :mod:`bench.data` from a producer process to a
   consumer process (:mod:`bench.measure`), sizes 1 MiB up to 4 GiB, capped by free memory;
2. the DAG-level comparison (:mod:`bench.dag_level`): the flights DAG at scale x1 and x10 with
   our backend and with common-io's object-storage backend, each run on a real Airflow deployment
   (scheduler, LocalExecutor, triggered through the REST API);
3. the report (:mod:`bench.report`): ``docs/bench.md``, ``docs/bench.png`` and last stdout lines
   ``key=value``: issue 16's ratios against pickle and Arrow IPC (``speedup_1GiB_strdf_arrow_vs_pickle``,
   ``speedup_1GiB_strdf_object_vs_pickle``, ``speedup_1GiB_df_vs_pickle``,
   ``ratio_1MiB_df_vs_pickle``, polars, torch, ...; :data:`bench.report.ISSUE_KEYS`), then
   ``speedup_dag_x10_vs_objectstorage=<ratio>`` (the flights DAG at x10 under the real scheduler:
   sum of the object-storage run's task seconds over ours; ``nan`` unless both runs succeeded),
   ``overhead_task_fluid_local_s=<seconds>`` and ``speedup_1GiB_df_vs_objectstorage=<ratio>``.

Knobs (environment variables): ``BENCH_MAX`` (largest size, e.g. ``256Mi``; default ``4Gi``),
``BENCH_QUICK=1`` (sizes 1 and 16 MiB, one run each, DAG at x1 only, report to ``artifacts/``),
``BENCH_DAG_SCALES`` (default ``1,10``; empty: skip the DAG level), ``BENCH_OUT`` (report folder),
``BENCH_KINDS`` (comma list of :data:`bench.data.KINDS`; default all), ``BENCH_PEERS`` (comma list
of peer names besides ours, e.g. ``pickle-shm,arrow-ipc-shm``; default all).
"""

from __future__ import annotations

import sys
from pathlib import Path


def deployment_class() -> type:
    """``Deployment`` of ``tests/deployment.py``: the one real Airflow deployment (api-server,
    scheduler, dag-processor, triggerer, LocalExecutor) for the tests and the benchmarks alike.
    bench imports from tests, never the reverse."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from deployment import Deployment

    return Deployment
