"""Vineyard object names for XComs, scoped to the DAG run.

Layout: ``<prefix>/<dag_id>/<run_id>/<task_id>/<map_index>/<key>``. Each component is
percent-encoded (``urllib.parse.quote``) so a ``/`` or a glob character (``*``, ``?``, ``[``) in
a run id or key can neither make two XComs share a name nor widen a ``list_names`` pattern.
Two DAG runs never share a name because Airflow's run ids are unique per DAG; a retry of the
same task instance (same map index and key) reuses its name on purpose, so it replaces its
earlier object.

A copy that a consumer on another vineyardd instance migrated to its own instance is named
``<xcom name>#<original object id>@<instance id>.<token>``: ``#`` is always percent-encoded
inside components, so it cannot occur in an XCom name; the copy shares its run's prefix (released
with the run) and names its original (``gc`` judges it by the original's XCom row). The token
keeps two consumers that migrate at the same moment from overwriting each other's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypedDict
from urllib.parse import quote, unquote

# Kept readable in names: run ids look like ``manual__2026-11-29T21:00:00+00:00``.
_SAFE = ":+@=,-_.~"


def _part(value: object) -> str:
    text = str(value)
    if not text:
        raise ValueError("an XCom name component (dag_id, run_id, task_id or key) is empty")
    return quote(text, safe=_SAFE)


def xcom_object_name(
    *, prefix: str, dag_id: str, run_id: str, task_id: str, map_index: int | None, key: str
) -> str:
    """Return the Vineyard name of one XCom; ``map_index=None`` is stored as ``-1`` (unmapped).

    :raises ValueError: a component is empty (an empty ``prefix`` is ``[fluid] name_prefix``).
    """
    if not str(prefix):
        raise ValueError(
            "[fluid] name_prefix is empty; unset AIRFLOW__FLUID__NAME_PREFIX (default 'airflow') or set "
            "it to a word, e.g. 'airflow'"
        )
    index = -1 if map_index is None else int(map_index)
    return "/".join([_part(prefix), _part(dag_id), _part(run_id), _part(task_id), str(index), _part(key)])


@dataclass(frozen=True)
class XComScope:
    """The XCom a value is pushed as: Airflow's XCom key (DAG run, task, map index, key).

    Its object's Vineyard name is made from it (:meth:`object_name`) and messages name it
    (:meth:`describe`). ``map_index`` None is an unmapped task (stored as ``-1``, as Airflow does).
    """

    dag_id: str
    run_id: str
    task_id: str
    key: str
    map_index: int | None = None

    @property
    def index(self) -> int:
        """The map index as Airflow stores it: ``-1`` for an unmapped task."""
        return -1 if self.map_index is None else int(self.map_index)

    @property
    def task_instance(self) -> tuple[str, str, str, int]:
        """``(dag_id, run_id, task_id, index)``: the task instance that pushes it."""
        return (self.dag_id, self.run_id, self.task_id, self.index)

    def missing(self) -> list[str]:
        """The fields a Vineyard name needs that are empty (a push from outside a running task)."""
        return [f for f in ("key", "task_id", "dag_id", "run_id") if not getattr(self, f)]

    def with_key(self, key: str) -> XComScope:
        """The same task instance's XCom under ``key`` (a tree's leaf: ``return_value.a.0``)."""
        return dataclasses.replace(self, key=key)

    def object_name(self, prefix: str) -> str:
        """Its Vineyard object name (:func:`xcom_object_name`)."""
        return xcom_object_name(
            prefix=prefix, dag_id=self.dag_id, run_id=self.run_id, task_id=self.task_id,
            map_index=self.map_index, key=self.key,
        )  # fmt: skip

    def describe(self) -> str:
        """``XCom 'key' of task 't' (DAG 'd', run 'r')``, for messages."""
        return f"XCom {self.key!r} of task {self.task_id!r} (DAG {self.dag_id!r}, run {self.run_id!r})"


def run_name_prefix(*, prefix: str, dag_id: str, run_id: str) -> str:
    """Return the name prefix (ending in ``/``) shared by every XCom object of one DAG run."""
    return "/".join([_part(prefix), _part(dag_id), _part(run_id)]) + "/"


def names_pattern(*, prefix: str, dag_id: str | None = None) -> str:
    """A ``list_names`` glob matching every XCom object name under ``prefix`` (of one DAG)."""
    return _part(prefix) + "/" + (_part(dag_id) + "/" if dag_id else "") + "*"


COPY_MARK = "#"


def copy_object_name(name: str, object_id: str, instance_id: int, token: str) -> str:
    """Name of a migrated copy of the object ``object_id`` (named ``name``) on ``instance_id``."""
    return f"{name}{COPY_MARK}{object_id}@{int(instance_id)}.{token}"


def copies_pattern(name: str, object_id: str, instance_id: int | None = None) -> str:
    """A ``list_names`` glob of the copies of ``object_id`` (on ``instance_id``, or anywhere)."""
    where = "*" if instance_id is None else f"{int(instance_id)}.*"
    return f"{name}{COPY_MARK}{object_id}@{where}"


def split_copy_name(name: str) -> tuple[str, str, int] | None:
    """``(xcom name, original object id, instance id)`` of a copy's name, or None for other names."""
    base, mark, rest = name.partition(COPY_MARK)
    original, at, where = rest.partition("@")
    instance = where.partition(".")[0]
    if not mark or not at or not original or not instance.isdigit():
        return None
    return base, original, int(instance)


class XComNameParts(TypedDict):
    """The components of an XCom object name: the keyword arguments of :func:`xcom_object_name`."""

    prefix: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    key: str


def split_xcom_object_name(name: str) -> XComNameParts:
    """Inverse of :func:`xcom_object_name`: ``{prefix, dag_id, run_id, task_id, map_index, key}``.

    :raises ValueError: ``name`` does not have the six components.
    """
    parts = name.split("/")
    if len(parts) != 6:
        raise ValueError(f"{name!r} is not an XCom object name (expected 6 '/'-separated parts)")
    prefix, dag_id, run_id, task_id, map_index, key = parts
    return {
        "prefix": unquote(prefix),
        "dag_id": unquote(dag_id),
        "run_id": unquote(run_id),
        "task_id": unquote(task_id),
        "map_index": int(map_index),
        "key": unquote(key),
    }
