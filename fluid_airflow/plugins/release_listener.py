"""Release a DAG run's Vineyard objects when the run ends, with no task added by the user.

An Airflow listener (``on_dag_run_success`` / ``on_dag_run_failed``, airflow/listeners/spec/
dagrun.py), run by whichever Airflow process finishes the run (the scheduler; the ``airflow dags
test`` process). With ``[fluid] keep_for = 0`` (the default) the run's objects are released at
once; with a positive value they are kept and ``fluid-airflow gc`` releases them once the
retention has passed; with ``-1`` never automatically. A failure to reach vineyardd is logged,
never raised: it must not affect the DAG run's state (``fluid-airflow gc`` cleans up later).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)
RELEASE_TIMEOUT = 5.0  # seconds one vineyardd call of the run-end release may wait


def _release(dag_run: Any) -> None:
    from fluid_airflow import config

    if config.get_int("keep_for") != 0 or not _backend_configured():
        return
    try:
        from fluid_airflow.vineyard.release import release_run
        from fluid_airflow.vineyard.xcom import backend_hook

        # This runs in the scheduler's loop: a hung vineyardd may hold it for RELEASE_TIMEOUT at most.
        timeout = min(RELEASE_TIMEOUT, config.get_seconds("vineyard_timeout"))
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
        _release(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        _release(dag_run)
