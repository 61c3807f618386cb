"""Release every Vineyard object of one DAG run (the XCom backend's objects, found by name).

Vineyard never frees an object by itself (shared notes vineyard.md section 1) and Airflow calls
the backend's ``purge`` only when a task is retried or cleared (airflow.md section 5.3), so a
finished run's objects stay in shared memory until something releases them: this module, used
by :class:`~fluid_airflow.operators.release.FluidReleaseRunOperator`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fluid_airflow import config
from fluid_airflow.vineyard.migration import held_bytes
from fluid_airflow.vineyard.naming import run_name_prefix

LIST_LIMIT = 1_000_000  # list_names defaults to 5 results (vineyard.md section 4)


@dataclass
class ReleaseReport:
    """What was (or, for a dry run, would be) released: object names and shared-memory bytes."""

    names: list[str] = field(default_factory=list)
    bytes: int = 0

    @property
    def objects(self) -> int:
        return len(self.names)


def run_objects(client: Any, dag_id: str, run_id: str) -> dict[str, Any]:
    """``{name: ObjectID}`` of the XCom objects of one DAG run in ``client``'s vineyardd."""
    prefix = run_name_prefix(prefix=config.get("name_prefix"), dag_id=dag_id, run_id=run_id)
    return dict(client.list_names(prefix + "*", limit=LIST_LIMIT).items())


def release_run(client: Any, dag_id: str, run_id: str, *, dry_run: bool = False) -> ReleaseReport:
    """Delete (unless ``dry_run``) every object of the DAG run and drop its name.

    Objects already gone are skipped; their names are dropped all the same.
    """
    import vineyard

    report = ReleaseReport()
    for name, object_id in sorted(run_objects(client, dag_id, run_id).items()):
        try:
            size = held_bytes(client.get_meta(object_id))
        except vineyard.ObjectNotExistsException:
            size = None
        if size is not None:
            report.names.append(name)
            report.bytes += size
        if dry_run:
            continue
        if size is not None:
            client.delete(object_id)
        client.drop_name(name)
    return report
