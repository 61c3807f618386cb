"""Questions to Airflow's metadata DB that the provider's server-side parts ask.

Only server processes may use this module (the scheduler's child processes, the CLI, the API
server): Airflow 3 task processes have no DB access.
"""

from __future__ import annotations

from typing import Any

FINISHED_RUN_STATES = frozenset({"success", "failed"})


def run_still_ended(dag_id: str, run_id: str, clear_number: int) -> bool:
    """True when the DAG run is finished and not cleared since it ended, or no longer exists.

    Airflow increments ``DagRun.clear_number`` on every clear of the run's tasks and sets a
    finished run back to queued (``clear_task_instances`` in ``airflow/models/taskinstance.py``,
    apache-airflow 3.3.2), so a run that ended with ``clear_number`` N and still has N has not run
    again since.
    """
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        found = session.execute(
            select(DagRun.state, DagRun.clear_number).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        ).first()
    if found is None:
        return True  # the run was deleted: its objects go as well
    state, number = found
    return str(state) in FINISHED_RUN_STATES and int(number) == int(clear_number)


def run_state(dag_id: str, run_id: str) -> str | None:
    """The DAG run's state (``queued``, ``running``, ``success``, ``failed``), or None when Airflow's DB has
    no such run.

    :raises sqlalchemy.exc.OperationalError: the DB cannot be read.
    """
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        state = session.execute(
            select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        ).scalar_one_or_none()
    return None if state is None else str(state)


RunKey = tuple[str, str]  # (dag_id, run_id)


def runs_with_xcom_values(runs: set[RunKey]) -> dict[RunKey, tuple[Any, list[Any]] | None]:
    """Per run: its ``DagRun`` (detached, attributes loaded) and the values of its XCom rows, or None
    when the run no longer exists (``fluid-airflow gc``)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    found: dict[RunKey, tuple[Any, list[Any]] | None] = {}
    with create_session() as session:
        for dag_id, run_id in sorted(runs):
            run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
            if run is None:
                found[(dag_id, run_id)] = None
                continue
            rows = session.scalars(
                select(XComModel.value).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id)
            )
            found[(dag_id, run_id)] = (run, list(rows))
        session.expunge_all()  # the caller reads state and end_date after the session closed
    return found


def recent_runs_with_xcom_values(
    dag_ids: set[str] | None, limit: int
) -> tuple[dict[RunKey, tuple[str, Any]], list[tuple[str, str, Any]]]:
    """The ``limit`` most recent runs (of ``dag_ids``; None: all) as ``{run: (state, end_date)}`` in
    that order, and ``(dag_id, run_id, value)`` of the XCom rows of those DAGs and run ids (a row of
    another run with a listed run id may be among them: the caller keeps only listed runs)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.end_date).order_by(DagRun.id.desc())
        if dag_ids is not None:
            query = query.where(DagRun.dag_id.in_(dag_ids))
        runs = {(d, r): (str(s), e) for d, r, s, e in session.execute(query.limit(limit))}
        rows = session.execute(
            select(XComModel.dag_id, XComModel.run_id, XComModel.value).where(
                XComModel.dag_id.in_({d for d, _ in runs}), XComModel.run_id.in_({r for _, r in runs})
            )
        ).all()
    return runs, [(d, r, v) for d, r, v in rows]
