"""Arrow types in Vineyard: stored as they are now, restored on read for older references.

Tables are stored as Arrow IPC streams (:mod:`fluid_airflow.vineyard.client.arrow_stream`), which
keep every type. References written while tables went through Vineyard's own Arrow builders
(``vineyard::Table``) record what those changed: ``string``/``binary``/``list`` columns stored with
64-bit offsets and read back as ``large_*`` (``python/vineyard/data/arrow.py`` at v0.24.2:
``binary_or_string_array_builder``, ``list_array_builder``, ``_resize_arrow_type``), recorded in
``cast_columns``; temporal and half-float columns stored as integer views of the same width
(Vineyard could not read them back), recorded in ``view_columns``. :func:`restore_arrow` undoes both.
"""

from __future__ import annotations

from typing import Any


def arrow_storage(table: Any) -> tuple[Any, dict[str, Any]]:
    """The table as it is stored now, and what :func:`restore_arrow` must undo (nothing).

    Tables are stored as one Arrow IPC stream (:mod:`fluid_airflow.vineyard.client.arrow_stream`),
    which keeps every Arrow type as it is; a RecordBatch is stored as a one-batch Table.
    References written while tables went through Vineyard's builders carry ``cast_columns`` /
    ``view_columns``, which :func:`restore_arrow` still undoes.
    """
    import pyarrow as pa

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    return table, {}


def _type_from_json(d: dict[str, Any]) -> Any:
    import pyarrow as pa

    kind = d["kind"]
    if kind == "timestamp":
        return pa.timestamp(d["unit"], tz=d.get("tz"))
    if kind in ("duration", "time32", "time64"):
        return getattr(pa, kind)(d["unit"])
    return {
        "halffloat": pa.float16(),
        "float16": pa.float16(),
        "date32[day]": pa.date32(),
        "date64[ms]": pa.date64(),
    }[kind]


def restore_arrow(stored: Any, extra: dict[str, Any]) -> Any:
    """Undo :func:`arrow_storage` on a Table read from Vineyard."""
    import pyarrow as pa

    if isinstance(stored, pa.RecordBatch):
        stored = pa.Table.from_batches([stored])
    schema = stored.schema
    for i in extra.get("cast_columns", []):
        schema = schema.set(i, schema.field(i).with_type(narrow(schema.field(i).type)))
    if schema != stored.schema:
        stored = stored.cast(schema)
    for i, spec in (extra.get("view_columns") or {}).items():
        field, target = stored.schema.field(int(i)), _type_from_json(spec)
        column = pa.chunked_array([c.view(target) for c in stored.column(int(i)).chunks], type=target)
        stored = stored.set_column(int(i), field.with_type(target), column)
    return stored


def _retype(t: Any, large: bool) -> Any:
    """``t`` with string/binary/list (recursively) in their 64-bit-offset ``large_*`` forms when
    ``large``, or back in their 32-bit forms when not."""
    import pyarrow as pa

    for small, wide in ((pa.string(), pa.large_string()), (pa.binary(), pa.large_binary())):
        if large and t == small:
            return wide
        if not large and t == wide:
            return small
    if pa.types.is_list(t) if large else pa.types.is_large_list(t):
        make = pa.large_list if large else pa.list_
        return make(t.value_field.with_type(_retype(t.value_type, large)))
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_retype(t.field(i).type, large)) for i in range(t.num_fields)])
    return t


def widen(t: Any) -> Any:
    return _retype(t, large=True)


def narrow(t: Any) -> Any:
    return _retype(t, large=False)
