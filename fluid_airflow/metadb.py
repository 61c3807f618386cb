"""Questions to Airflow's metadata DB that the provider's server-side parts ask.

Only server processes may use this module (the scheduler's child processes, the CLI, the API
server): Airflow 3 task processes have no DB access.
"""

from __future__ import annotations

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
