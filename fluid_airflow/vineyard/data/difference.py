"""The first structural difference between a value put and what Vineyard gives back.

Used by the read-back check at push (:func:`~fluid_airflow.vineyard.data.codec.check_read_back`) and by the
frame codec (:mod:`~fluid_airflow.vineyard.data.frames`); compares types, shapes, dtypes, labels and index,
never every element.
"""

from __future__ import annotations

from typing import Any


def value_difference(value: Any, got: Any, lenient_strings: bool = False) -> str | None:
    """The first structural difference between ``value`` and ``got`` (same kind), or None."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if isinstance(value, str):
        return None if got == value else "JSON text differs"
    if isinstance(value, np.ndarray):
        if not isinstance(got, np.ndarray) or got.shape != value.shape or got.dtype != value.dtype:
            return f"got {type(got).__name__} {getattr(got, 'shape', '')} {getattr(got, 'dtype', '')}"
        return None
    if isinstance(value, pd.DataFrame):
        if not isinstance(got, pd.DataFrame) or got.shape != value.shape:
            return f"got {type(got).__name__} of shape {getattr(got, 'shape', None)}"
        if list(got.columns) != list(value.columns):
            return f"columns {list(got.columns)[:5]} instead of {list(value.columns)[:5]}"
        bad = [c for c in value.columns if got[c].dtype != value[c].dtype]
        if bad:
            return f"column {bad[0]!r} has dtype {got[bad[0]].dtype} instead of {value[bad[0]].dtype}"
        # Same dtype can still hide a bare ndarray where pandas expects its own array type.
        bad = [c for c in value.columns if type(got[c].array) is not type(value[c].array)]
        if bad:
            return f"column {bad[0]!r} is backed by {type(got[bad[0]].array).__name__}"
        return _index_difference(value.index, got.index)
    if isinstance(value, pd.Series):
        if not isinstance(got, pd.Series) or len(got) != len(value) or got.dtype != value.dtype:
            return f"got {type(got).__name__} of dtype {getattr(got, 'dtype', None)}"
        if type(got.array) is not type(value.array):
            return f"values backed by {type(got.array).__name__} instead of {type(value.array).__name__}"
        if got.name != value.name:
            return f"name {got.name!r} instead of {value.name!r}"
        return _index_difference(value.index, got.index)
    if isinstance(value, (pa.Table, pa.RecordBatch)):
        if type(got) is not type(value) or got.num_rows != value.num_rows:
            return f"got {type(got).__name__} with {getattr(got, 'num_rows', '?')} rows"
        if got.schema.names != value.schema.names:
            return f"columns {got.schema.names[:5]} instead of {value.schema.names[:5]}"
        return _arrow_type_difference(value.schema, got.schema, lenient_strings)
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        if len(got) != len(value) or got.type != value.type:
            return f"got {type(got).__name__} of type {getattr(got, 'type', None)}, length {len(got)}"
        return None
    return f"unexpected stored type {type(value).__name__}"


def _index_difference(want: Any, got: Any) -> str | None:
    if len(got) != len(want) or list(got.names) != list(want.names) or got.dtype != want.dtype:
        got_desc = f"{type(got).__name__}{list(got.names)} {got.dtype}"
        return f"index {got_desc} instead of {list(want.names)} {want.dtype}"
    if not got.equals(want):
        return "index values differ"
    return None


def _arrow_type_difference(want: Any, got: Any, lenient_strings: bool) -> str | None:
    import pyarrow as pa

    # Vineyard stores string/binary with 64-bit offsets; same values, wider type.
    widened = {pa.string(): pa.large_string(), pa.binary(): pa.large_binary()} if lenient_strings else {}
    for w, g in zip(want, got, strict=True):
        if w.type != g.type and widened.get(w.type) != g.type:
            return f"column {w.name!r} has type {g.type} instead of {w.type}"
    return None
