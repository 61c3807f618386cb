"""Release every Vineyard object of one DAG run (the XCom backend's objects, found by name).

Vineyard never frees an object by itself (docs/design.md §2) and Airflow calls the backend's
``purge`` only when a task is retried or cleared (docs/design.md §13), so a
finished run's objects stay in shared memory until something releases them: this module, used
by :class:`~fluid_airflow.operators.release.FluidReleaseRunOperator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fluid_airflow import config
from fluid_airflow.vineyard.client.calls import LIST_LIMIT
from fluid_airflow.vineyard.data.naming import run_name_prefix
from fluid_airflow.vineyard.lifecycle.delete import delete_named
from fluid_airflow.vineyard.lifecycle.metadb import FINISHED_RUN_STATES, run_state
from fluid_airflow.vineyard.lifecycle.migration import held_bytes

if TYPE_CHECKING:
    from vineyard import Client


@dataclass
class ReleaseReport:
    """What was (or, for a dry run, would be) released: object names and shared-memory bytes."""

    names: list[str] = field(default_factory=list)
    bytes: int = 0
    skipped: str = ""  # why nothing was released, when it was not

    @property
    def objects(self) -> int:
        """How many objects were (or would be) released."""
        return len(self.names)


def run_objects(client: Client, dag_id: str, run_id: str) -> dict[str, Any]:
    """``{name: ObjectID}`` of the XCom objects of one DAG run in ``client``'s vineyardd."""
    prefix = run_name_prefix(prefix=config.get("name_prefix"), dag_id=dag_id, run_id=run_id)
    return dict(client.list_names(prefix + "*", limit=LIST_LIMIT).items())


def unfinished(dag_id: str, run_id: str, how_to_force: str) -> str | None:
    """Why releasing the DAG run now would break it (it is queued or running, so its tasks may still read
    its objects), or None (it has ended, or Airflow's DB does not know it).

    :param how_to_force: how the caller releases it anyway, for the message (``pass --force``).
    :raises sqlalchemy.exc.OperationalError: Airflow's DB cannot be read.
    """
    state = run_state(dag_id, run_id)
    if state is None or state in FINISHED_RUN_STATES:
        return None
    return (
        f"DAG run {dag_id} / {run_id} is {state}: its tasks may still read the objects it holds, and would "
        "fail with VineyardObjectLostError. It is released by itself when it ends ([fluid] keep_for); to "
        f"release it now anyway, {how_to_force}."
    )


def release_run(
    client: Client,
    dag_id: str,
    run_id: str,
    *,
    dry_run: bool = False,
    still_ended: Callable[[], bool] | None = None,
) -> ReleaseReport:
    """Delete (unless ``dry_run``) every object of the DAG run and drop its name.

    Objects already gone are skipped; their names are dropped all the same. A name a new put
    has repointed since it was listed keeps its new object (:func:`delete_named`).

    :param still_ended: asked once, after the names are listed and before anything is deleted;
        False releases nothing (``report.skipped`` says why). The scheduler's run-end release
        passes a check that the run was not cleared since it ended: it runs in a child process
        that may start seconds later, when a cleared run's tasks may already have put new objects
        under the same names.
    """
    import vineyard

    report = ReleaseReport()
    listed = sorted(run_objects(client, dag_id, run_id).items())
    if still_ended is not None and not still_ended():
        report.skipped = "the DAG run was cleared or is running again since it ended"
        return report
    for name, object_id in listed:
        try:
            size = held_bytes(client.get_meta(object_id))
        except vineyard.ObjectNotExistsException:
            size = None
        if size is not None:
            report.names.append(name)
            report.bytes += size
        if not dry_run:
            delete_named(client, name, object_id)
    return report
