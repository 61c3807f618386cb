"""How Arrow types are kept intact in Vineyard (vineyard 0.24.2): widened on the way in, restored on read.

Vineyard's Arrow builders store ``string``/``binary``/``list`` columns with 64-bit offsets and
its resolvers return them as ``large_*`` (``python/vineyard/data/arrow.py`` at v0.24.2:
``binary_or_string_array_builder``, ``list_array_builder``, ``_resize_arrow_type``); temporal
and half-float columns are stored but cannot be read back (tested), so they travel as integer
views of the same width. :func:`arrow_storage` records what :func:`restore_arrow` must undo.
"""

from __future__ import annotations

from typing import Any


def arrow_storage(table: Any) -> tuple[Any, dict[str, Any]]:
    """The table as Vineyard will store it, and what :func:`decode` needs to undo that.

    Tested on vineyard 0.24.2: string/binary/list columns come back in their ``large_*`` forms
    (recorded in ``cast_columns``, narrowed on read); timestamp (with or without zone),
    duration, date, time and float16 columns are stored but cannot be read back at all, so they
    are stored as zero-copy integer views of the same width, their type recorded in
    ``view_columns`` and restored (again zero-copy) on read. A RecordBatch is stored as a Table;
    a table without batches (no rows) is stored as one empty RecordBatch.
    """
    import pyarrow as pa

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    extra: dict[str, Any] = {}
    narrow = [i for i, f in enumerate(table.schema) if widen(f.type) != f.type]
    if narrow:
        extra["cast_columns"] = narrow
    views = {str(i): _type_json(f.type) for i, f in enumerate(table.schema) if _int_view(f.type) is not None}
    for i in views:
        field = table.schema.field(int(i))
        target = _int_view(field.type)
        column = pa.chunked_array([c.view(target) for c in table.column(int(i)).chunks], type=target)
        table = table.set_column(int(i), field.with_type(target), column)
    if views:
        extra["view_columns"] = views
    if not table.to_batches():
        # Vineyard's table_builder stores a Table as its batches, and its table_resolver fails
        # on none (Table.from_batches([]), v0.24.2): an empty table goes as one empty batch.
        empty = [pa.nulls(0, f.type) for f in table.schema]
        return pa.RecordBatch.from_arrays(empty, schema=table.schema), extra
    return table, extra


def _int_view(t: Any) -> Any:
    """The integer type a column of type ``t`` is stored as, or None to store it as it is."""
    import pyarrow as pa

    if pa.types.is_float16(t):
        return pa.uint16()
    if pa.types.is_date32(t) or pa.types.is_time32(t):
        return pa.int32()
    if pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_date64(t) or pa.types.is_time64(t):
        return pa.int64()
    return None


def _type_json(t: Any) -> dict[str, Any]:
    import pyarrow as pa

    if pa.types.is_timestamp(t):
        return {"kind": "timestamp", "unit": t.unit, "tz": t.tz}
    if pa.types.is_duration(t) or pa.types.is_time32(t) or pa.types.is_time64(t):
        return {"kind": str(t).split("[")[0], "unit": t.unit}
    return {"kind": str(t)}  # float16 / halffloat, date32[day], date64[ms]


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
