"""The JSON reference the Vineyard XCom backend stores in Airflow's DB instead of the payload.

A reference is a flat JSON object, readable as-is in the Airflow UI's XCom view (the API
server never runs custom backends, docs/design.md §12). Example::

    {"__vineyard_ref__": 1, "type": "pandas.DataFrame", "shape": [327346, 19], "bytes": 53142032,
     "object_id": "o688a4b364d800144", "name": "airflow/flights/manual__.../clean/-1/return_value",
     "host": "vm", "instance_id": 0, "created": "2026-11-29T21:30:00+00:00", ...}

It is kept well under 2 KB: column and schema summaries are cut to :data:`MAX_COLUMNS` entries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from fluid_airflow.units import format_bytes

MARKER = "__vineyard_ref__"
VERSION = 1
MAX_COLUMNS = 16
MAX_LABEL = 48
_DERIVED = {
    "dag_id",
    "run_id",
    "task_id",
    "map_index",
    "key",
    "host",
    "created",
    "columns",
    "instance_id",
    "expires",
}


@dataclass(frozen=True)
class VineyardReference:
    """Where one XCom value lives in Vineyard and what it is.

    :param object_id: Vineyard object id in its short form (``repr(ObjectID)``, e.g. ``o688a…``).
    :param name: the object's Vineyard name (see :mod:`fluid_airflow.vineyard.data.naming`).
    :param type: Python type of the value as the consumer gets it, e.g. ``numpy.ndarray``.
    :param encoding: how it is stored: ``vineyard`` (Vineyard's own type), ``arrow`` (a pandas
        object stored as an Arrow table, converted back on read) or ``json`` (Airflow-serialised
        JSON text too large to keep inline).
    :param typename: Vineyard's type name of the stored object, checked again on read.
    :param bytes: shared memory the object occupies, in bytes (``ObjectMeta.memory_usage``).
    :param shape: array shape, or ``[rows, columns]`` for tables, ``[length]`` for 1-D data.
    :param dtype: numpy dtype string for arrays and Series.
    :param columns: up to :data:`MAX_COLUMNS` ``{column: dtype}`` entries (pandas or Arrow types).
    :param socket: IPC socket of the vineyardd that holds the object, when stored over IPC (a
        Dataset's vineyardd for ``@task.fluid`` results, the configured one otherwise).
    :param extra: encoding details needed to rebuild the value exactly (small).
    :param expires: when the object is released, from ``[fluid] keep_for`` at push time: ``at run
        end``, ``<n> s after run end`` or ``never (release task or gc)``.

    The stored JSON starts with a ``summary`` line (:meth:`describe`) so that Airflow's XCom view,
    which shows the stored JSON as is, reads e.g. ``pandas.DataFrame 327346 x 19, 50.68 MiB in
    Vineyard on vm (instance 0), released at run end``.
    """

    object_id: str
    name: str
    type: str
    encoding: str
    typename: str
    bytes: int
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    key: str
    host: str = ""
    socket: str = ""
    instance_id: int = 0
    created: str = ""
    shape: list[int] | None = None
    dtype: str | None = None
    columns: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    expires: str = ""

    def describe(self) -> str:
        """One line for people: type, shape, bytes, where, and when it is released."""
        shape = " x ".join(str(n) for n in self.shape) if self.shape else ""
        where = f" on {self.host}" if self.host else ""
        released = f", released {self.expires}" if self.expires else ""
        return (
            f"{self.type}{' ' + shape if shape else ''}, {format_bytes(self.bytes)} in Vineyard{where} "
            f"(instance {self.instance_id}){released}"
        )

    def to_json(self, compact: bool = False) -> dict[str, Any]:
        """Return the JSON-able dict stored in Airflow's DB (None fields are left out).

        ``compact=True`` leaves out what the name already says (DAG, run, task, map index, key)
        and the descriptive fields, for references nested in a container (:mod:`.tree`).
        """
        data: dict[str, Any] = {MARKER: VERSION}
        if not compact:
            data["summary"] = self.describe()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name == "extra" and not value) or (compact and f.name in _DERIVED):
                continue
            data[f.name] = value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VineyardReference:
        """Rebuild a reference from :meth:`to_json` output.

        :raises ValueError: ``data`` is not a reference of a version this package reads.
        """
        if data.get(MARKER) != VERSION:
            raise ValueError(f"not a Vineyard XCom reference of version {VERSION}: {data!r:.200}")
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        if "dag_id" not in fields:  # compact form: the scope comes from the name
            from fluid_airflow.vineyard.data.naming import split_xcom_object_name

            scope = split_xcom_object_name(fields["name"])
            fields.update({k: scope[k] for k in ("dag_id", "run_id", "task_id", "map_index", "key")})
        return cls(**fields)

    @property
    def producer(self) -> str:
        """``task_id`` with ``[map_index]`` for mapped tasks, for messages."""
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"


def is_reference(value: object) -> TypeGuard[dict[str, Any]]:
    """True when ``value`` is a dict produced by :meth:`VineyardReference.to_json`."""
    return isinstance(value, dict) and MARKER in value


def summarize_columns(pairs: list[tuple[object, object]]) -> dict[str, str]:
    """``{column: type}`` for the first :data:`MAX_COLUMNS` pairs, labels cut to :data:`MAX_LABEL`."""
    return {str(name)[:MAX_LABEL]: str(kind)[:MAX_LABEL] for name, kind in pairs[:MAX_COLUMNS]}
