"""Reclaim the XCom backend's Vineyard objects that Airflow no longer needs (``fluid-airflow gc``).

Airflow calls the backend's ``purge`` only when a task is retried or cleared (docs/design.md
§13): deleting an XCom row in the UI or REST API, deleting a DAG run and ``airflow db clean`` all
leave the row's Vineyard object in shared memory, and Vineyard never frees anything by itself
(docs/design.md §2). This module compares the objects named under
``[fluid] name_prefix`` with Airflow's metadata DB and deletes the orphans:

- ``run_deleted``: the object's DAG run is gone;
- ``unreferenced``: the run is finished and none of its XCom rows refers to the object id;
- ``expired``: the run is finished and its retention has passed since it ended (``[fluid]
  keep_for`` for a successful run, ``keep_failed_for`` for a failed one: ``config.retention``).

Objects of runs that are not finished (queued, running) are never touched: their tasks may be
storing an object whose XCom row is not written yet. Names that are not XCom object names are
reported as skipped. Deleting an object also drops its name, unless the name was repointed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from fluid_airflow import config
from fluid_airflow.units import format_bytes
from fluid_airflow.vineyard.client.calls import LIST_LIMIT
from fluid_airflow.vineyard.data.naming import (
    XComNameParts,
    names_pattern,
    split_copy_name,
    split_xcom_object_name,
    xcom_object_name,
)
from fluid_airflow.vineyard.data.tree import referenced_ids
from fluid_airflow.vineyard.lifecycle.delete import delete_named
from fluid_airflow.vineyard.lifecycle.metadb import FINISHED_RUN_STATES, runs_with_xcom_values
from fluid_airflow.vineyard.lifecycle.migration import held_bytes
from fluid_airflow.vineyard.lifecycle.reclaim import Reclaimed, reclaim

if TYPE_CHECKING:
    from vineyard import Client

REASONS = {
    "run_deleted": "its DAG run no longer exists",
    "unreferenced": "no XCom row of its finished run refers to it",
    "expired": "its run ended longer ago than [fluid] keep_for (keep_failed_for if it failed)",
}
KEPT = {"run_active": "of queued or running runs", "referenced": "still referenced by XCom rows"}
FINISHED = FINISHED_RUN_STATES


@dataclass
class GcObject:
    """One XCom object and the decision taken about it (``reason``: a key of REASONS or KEPT)."""

    name: str
    object_id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    key: str
    bytes: int
    reason: str


@dataclass
class GcReport:
    """What ``gc`` reclaimed (or, for a dry run, would reclaim), kept and skipped."""

    dry_run: bool
    keep_for: int
    reclaimed: list[GcObject] = field(default_factory=list)
    kept: list[GcObject] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unnamed: Reclaimed = field(default_factory=Reclaimed)

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.reclaimed)

    def totals(self, attribute: str, objects: list[GcObject] | None = None) -> dict[str, dict[str, int]]:
        """``{value: {"objects": n, "bytes": b}}`` of the reclaimed objects grouped by ``attribute``."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"objects": 0, "bytes": 0})
        for obj in self.reclaimed if objects is None else objects:
            out[getattr(obj, attribute)]["objects"] += 1
            out[getattr(obj, attribute)]["bytes"] += obj.bytes
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable summary printed by ``fluid-airflow gc --json``."""
        return {
            "dry_run": self.dry_run,
            "keep_for": self.keep_for,
            "reclaimed": {"objects": len(self.reclaimed), "bytes": self.bytes},
            "by_dag": self.totals("dag_id"),
            "by_reason": self.totals("reason"),
            "kept": {"objects": len(self.kept), "bytes": sum(o.bytes for o in self.kept)},
            "kept_by_reason": self.totals("reason", self.kept),
            "objects": [asdict(o) for o in self.reclaimed],
            "skipped": self.skipped,
            "unnamed": self.unnamed.to_dict(),
        }


def _run_facts(runs: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, set[str]] | None]:
    """``{(dag_id, run_id): (DagRun, ids its XCom rows refer to) or None when the run is gone}``."""
    facts: dict[tuple[str, str], tuple[Any, set[str]] | None] = {}
    for key, found in runs_with_xcom_values(runs).items():
        if found is None:
            facts[key] = None
            continue
        run, values = found
        facts[key] = (run, set().union(*(referenced_ids(v) for v in values)))
    return facts


def _decide(facts: tuple[Any, set[str]] | None, object_id: str, keep_for: int | None, now: datetime) -> str:
    if facts is None:
        return "run_deleted"
    run, ids = facts
    if str(run.state) not in FINISHED:
        return "run_active"  # tasks may be between storing an object and writing its row
    if object_id not in ids:
        return "unreferenced"
    keep = config.retention(str(run.state)) if keep_for is None else keep_for
    if keep >= 0 and run.end_date is not None and run.end_date + timedelta(seconds=keep) <= now:
        return "expired"
    return "referenced"


def collect(
    client: Client,
    *,
    dag_id: str | None = None,
    dry_run: bool = False,
    keep_for: int | None = None,
    now: datetime | None = None,
) -> GcReport:
    """Find the backend's orphaned objects in ``client``'s vineyardd and delete them unless ``dry_run``.

    :param dag_id: only look at this DAG's objects.
    :param keep_for: seconds a finished run's objects are kept (default ``[fluid] keep_for``;
        negative: never expire).
    :param now: the time ``keep_for`` is measured against (default: now, UTC).
    """
    import vineyard

    shown = config.get_int("keep_for") if keep_for is None else keep_for
    now = now or datetime.now(timezone.utc)
    prefix = config.get("name_prefix")
    pattern = names_pattern(prefix=prefix, dag_id=dag_id)
    report = GcReport(dry_run=dry_run, keep_for=shown)
    found: list[tuple[str, Any, XComNameParts, str]] = []
    for name, object_id in sorted(client.list_names(pattern, limit=LIST_LIMIT).items()):
        copy = split_copy_name(name)  # a consumer's migrated copy is judged by its original
        base = copy[0] if copy else name
        try:
            parts = split_xcom_object_name(base)
            canonical = xcom_object_name(**parts) == base  # no other encoding of the same XCom
        except ValueError:
            canonical = False
        if not canonical or parts["prefix"] != prefix or (dag_id and parts["dag_id"] != dag_id):
            report.skipped.append(name)
            continue
        found.append((name, object_id, parts, copy[1] if copy else repr(object_id)))
    facts = _run_facts({(str(p["dag_id"]), str(p["run_id"])) for _, _, p, _ in found})
    for name, object_id, parts, original in found:
        run_facts = facts[(str(parts["dag_id"]), str(parts["run_id"]))]
        reason = _decide(run_facts, original, keep_for, now)
        try:
            size = held_bytes(client.get_meta(object_id))
        except vineyard.ObjectNotExistsException:
            size = 0  # a dangling name: the object was deleted, the name kept
        obj = GcObject(
            name=name,
            object_id=repr(object_id),
            dag_id=parts["dag_id"],
            run_id=parts["run_id"],
            task_id=parts["task_id"],
            map_index=parts["map_index"],
            key=parts["key"],
            bytes=size,
            reason=reason,
        )
        (report.reclaimed if reason in REASONS else report.kept).append(obj)
        if reason in REASONS and not dry_run:
            delete_named(client, name, object_id)
    if dag_id is None:  # objects no name reaches belong to no DAG
        report.unnamed = reclaim(client, dry_run=dry_run, unnamed=config.get_bool("reclaim_unnamed"))
    return report


def describe(report: GcReport) -> str:
    """Human-readable lines for ``report``."""

    def amount(objects: int, bytes: int) -> str:
        return f"{objects} object{'' if objects == 1 else 's'}, {format_bytes(bytes)}"

    verb = "Would reclaim" if report.dry_run else "Reclaimed"
    tail = " (dry run: nothing deleted)" if report.dry_run else ""
    lines = [f"{verb} {amount(len(report.reclaimed), report.bytes)}{tail}"]
    if report.reclaimed:
        lines.append("by reason:")
        lines += [f"  {r}: {amount(**t)} ({REASONS[r]})" for r, t in report.totals("reason").items()]
        lines.append("by DAG:")
        lines += [f"  {d}: {amount(**t)}" for d, t in report.totals("dag_id").items()]
        lines.append("objects:")
        lines += [f"  {o.name}  {o.object_id}  {format_bytes(o.bytes)}  {o.reason}" for o in report.reclaimed]
    kept = report.totals("reason", report.kept)
    why = "; ".join(f"{t['objects']} {KEPT[r]}" for r, t in kept.items())
    kept_bytes = sum(o.bytes for o in report.kept)
    lines.append(f"Kept {amount(len(report.kept), kept_bytes)}" + (f": {why}" if why else ""))
    unnamed = report.unnamed
    if unnamed.in_flight:
        lines.append(
            f"Objects no name reaches: not looked at, {unnamed.in_flight} put(s) in flight; run gc again"
        )
    elif unnamed.objects or unnamed.journals:
        lines.append(
            f"{verb} {amount(unnamed.objects, unnamed.bytes)} that no name reaches (left by failed or "
            f"killed puts; {unnamed.journals} dead put journal(s))"
        )
    if report.skipped:
        lines.append(f"Skipped {len(report.skipped)} name(s) that are not XCom object names:")
        lines += [f"  {name}" for name in report.skipped]
    return "\n".join(lines)
