"""Release a DAG run's Vineyard objects when the run ends, with no task added by the user.

An Airflow listener (``on_dag_run_success`` / ``on_dag_run_failed``, airflow/listeners/spec/
dagrun.py, Airflow 3.3.2; docs/design.md §15), run by whichever Airflow process finishes the run
(the scheduler, where the release runs as ``fluid-airflow release`` in a child process; the
``airflow dags test`` process, in it).
With ``[fluid] keep_for = 0`` (the default) the run's objects are released at
once; with a positive value they are kept and the scheduler's expiry thread
(:mod:`~fluid_airflow.plugins.expiry`) releases them once the retention has passed; with ``-1``
never automatically. A failed run is kept ``[fluid] keep_failed_for`` (a day by default), so
that a fixed and cleared task finds its inputs. A failure to reach vineyardd is logged,
never raised: it must not affect the DAG run's state (``fluid-airflow gc`` cleans up later).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

from fluid_airflow.plugins import expiry

log = logging.getLogger(__name__)
RELEASE_TIMEOUT = 5.0  # seconds one vineyardd call of the run-end release may wait


def _release(dag_run: Any, state: str) -> None:
    from fluid_airflow import config

    expiry.ensure_started()  # this process finishes runs: it also expires them later
    if config.retention(state) != 0 or not _backend_configured():
        return
    timeout = min(RELEASE_TIMEOUT, config.get_seconds("vineyard_timeout"))
    if expiry.in_scheduler():
        # A child process: no vineyard client may live in the scheduler (see expiry's docstring).
        # It starts seconds later: if the run is cleared meanwhile, its re-run's objects must stay.
        run = ["--dag-id", dag_run.dag_id, "--run-id", dag_run.run_id]
        cleared = ["--if-clear-number", str(int(dag_run.clear_number or 0))]
        expiry.spawn(["release", *run, "--timeout", str(timeout), *cleared])
        return
    try:
        from fluid_airflow.vineyard.lifecycle.release import release_run
        from fluid_airflow.vineyard.xcom import backend_hook

        report = release_run(backend_hook(timeout).get_conn(), dag_run.dag_id, dag_run.run_id)
    except Exception as exc:
        log.warning(
            "Could not release the Vineyard objects of DAG run %s/%s (%s); `fluid-airflow gc` will.",
            dag_run.dag_id, dag_run.run_id, exc,
        )  # fmt: skip
        return
    if report.objects:
        log.info(
            "Released %d Vineyard objects (%d bytes) of DAG run %s/%s",
            report.objects, report.bytes, dag_run.dag_id, dag_run.run_id,
        )  # fmt: skip


def _backend_configured() -> bool:
    """Only when Airflow uses our XCom backend: otherwise there is nothing of ours to release."""
    from airflow.sdk import conf

    return conf.get("core", "xcom_backend", fallback="").endswith("VineyardXComBackend")


class ReleaseListener:
    """The listener object (pluggy collects the ``@hookimpl`` methods)."""

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        """Release (or leave for expiry) a successful run's objects (``[fluid] keep_for``)."""
        _release(dag_run, "success")

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        """Release (or keep for fix-and-clear) a failed run's objects (``[fluid] keep_failed_for``)."""
        _release(dag_run, "failed")

    @hookimpl
    def on_dag_run_running(self, dag_run: Any, msg: str) -> None:
        """Start the expiry thread in the process that runs DAG runs (the scheduler)."""
        expiry.ensure_started()

    @hookimpl
    def on_starting(self, component: Any) -> None:
        """Start the expiry thread when ``component`` is the scheduler
        (``airflow/_shared/listeners/spec/lifecycle.py``, apache-airflow 3.3.2)."""
        expiry.ensure_started(component)
