"""How each XCom value type is stored in Vineyard, read back, and checked.

Vineyard 0.24.2 stores numpy arrays, numpy-backed pandas objects and Arrow data natively, but
loses or corrupts some shapes silently (tested, see shared notes vineyard.md sections 4-5 and
``tests/test_codec.py``): pandas extension dtypes (categorical, nullable ``Int64``, ``string``)
fail on read, a MultiIndex comes back empty, MultiIndex columns come back scrambled, a
categorical Series comes back as ``object``, Arrow ``string`` comes back as ``large_string``,
string ndarrays come back as ``object``, and anything unknown silently falls back to pickle.
So this module decides the encoding up front, and :func:`check_read_back` compares what
Vineyard returns with what was put, in the producer, before the XCom is recorded.

Encodings:
- ``vineyard``: Vineyard's own type (``Tensor``, ``DataFrame``, ``Series``, ``Table``,
  ``RecordBatch``, arrays). Read zero-copy: the consumer gets read-only views of shared memory.
- ``arrow``: a pandas object Vineyard cannot hold natively is stored as an Arrow Table with
  pandas metadata (``pa.Table.from_pandas``) and rebuilt with ``Table.to_pandas()`` on read,
  which copies (Arrow -> pandas conversion), but exactly restores extension dtypes and indexes.
- ``json``: Airflow-serialised JSON text above the inline threshold, as a ``uint8`` tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Module import, not names: Airflow may load this module while fluid_airflow.exceptions is
# still initialising (it imports airflow, whose config loads the XCom backend).
from fluid_airflow import exceptions as errors
from fluid_airflow.vineyard.reference import VineyardReference, summarize_columns

VINEYARD_MODULES = ("numpy", "pandas", "pyarrow")
# numpy dtype kinds Vineyard's Tensor round-trips exactly: bool, ints, uints, floats,
# timedelta64, datetime64. Complex and bytes ("S") do not come back (tested).
_NATIVE_KINDS = "biufmM"
# In a pandas Series, Vineyard returns datetime/timedelta values as a bare ndarray instead of
# pandas' DatetimeArray/TimedeltaArray (repr and reductions break), and in a DataFrame the same
# for timedelta columns (tested): those go through Arrow instead.
_FRAME_KINDS = "biufM"
_SERIES_KINDS = "biuf"


@dataclass
class Encoded:
    """A value ready for ``client.put`` plus what the reference records about it."""

    payload: Any
    type: str
    encoding: str
    shape: list[int] | None = None
    dtype: str | None = None
    columns: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_vineyard_type(value: object) -> bool:
    """True for numpy arrays, pandas DataFrames/Series and pyarrow Tables/RecordBatches/Arrays.

    Checks the module name first so plain values never import numpy, pandas or pyarrow.
    """
    # MRO, not just the type: values read from Vineyard are subclasses such as
    # vineyard.data.tensor.ndarray, and users subclass DataFrame.
    if not any(c.__module__.split(".")[0] in VINEYARD_MODULES for c in type(value).__mro__):
        return False
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    return isinstance(
        value, (np.ndarray, pd.DataFrame, pd.Series, pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray)
    )


def encode(value: Any) -> Encoded:
    """Choose how ``value`` is stored. Call only when :func:`is_vineyard_type` is true.

    :raises UnsupportedXComValueError: the value has a shape no encoding keeps intact
        (object or structured ndarrays, duplicate DataFrame columns, unnamed Series names of
        unusual types, Arrow conversion errors).
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if isinstance(value, np.ndarray):
        return _encode_ndarray(value)
    if isinstance(value, pd.DataFrame):
        return _encode_dataframe(value)
    if isinstance(value, pd.Series):
        return _encode_series(value)
    if isinstance(value, (pa.Table, pa.RecordBatch)):
        kind = "pyarrow.Table" if isinstance(value, pa.Table) else "pyarrow.RecordBatch"
        payload, extra = _arrow_storage(value)
        return Encoded(
            payload=payload,
            type=kind,
            encoding="vineyard",
            shape=[value.num_rows, value.num_columns],
            columns=summarize_columns([(f.name, f.type) for f in value.schema]),
            extra=extra,
        )
    if isinstance(value, (pa.ChunkedArray, pa.Array)):
        # Vineyard pickles a ChunkedArray; a one-column Table is stored natively instead, and
        # Arrays take the same path so their types get the same care (strings, time zones).
        kind = "pyarrow.ChunkedArray" if isinstance(value, pa.ChunkedArray) else "pyarrow.Array"
        payload, extra = _arrow_storage(pa.table({"values": value}))
        return Encoded(
            payload=payload,
            type=kind,
            encoding="vineyard",
            shape=[len(value)],
            dtype=str(value.type),
            extra=extra,
        )
    raise errors.UnsupportedXComValueError(f"{type(value).__qualname__} is not a Vineyard XCom type")


def _encode_ndarray(arr: Any) -> Encoded:
    import numpy as np

    if isinstance(arr, (np.ma.MaskedArray, np.matrix)):
        raise errors.UnsupportedXComValueError(
            f"a {type(arr).__module__}.{type(arr).__name__} would come back as a plain ndarray (its mask "
            "or matrix semantics lost). Return the data and the mask as two arrays (arr.data, "
            "arr.mask), or np.asarray(arr) if the plain values are what you mean."
        )
    kind = arr.dtype.kind
    extra: dict[str, Any] = {}
    if kind == "U":
        extra["astype"] = arr.dtype.str  # Vineyard returns strings as an object array
    elif kind not in _NATIVE_KINDS:
        what = {"O": "object", "V": "structured", "S": "bytes", "c": "complex"}.get(kind, f"kind {kind!r}")
        raise errors.UnsupportedXComValueError(
            f"numpy arrays of dtype {arr.dtype} ({what}) cannot be stored by Vineyard by value. Convert it "
            "to a numeric, bool, datetime or str array (e.g. arr.astype(str), arr.real/arr.imag), a "
            "pandas DataFrame or an Arrow table before returning it."
        )
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.ascontiguousarray(arr)  # a strided view: store the values, not the parent buffer
    return Encoded(
        payload=arr,
        type="numpy.ndarray",
        encoding="vineyard",
        shape=list(arr.shape),
        dtype=arr.dtype.str,
        extra=extra,
    )


def _native_column(values: Any, kinds: str = _FRAME_KINDS, tz_ok: bool = True) -> bool:
    """True when Vineyard stores this column (or index) by value and returns the same dtype."""
    import numpy as np
    import pandas as pd

    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        return tz_ok
    if not isinstance(dtype, np.dtype):
        return False  # pandas extension dtypes (category, Int64, string, ...) fail on read
    if dtype.kind in kinds:
        return True
    return dtype.kind == "O" and pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")


def _native_index(index: Any) -> bool:
    import pandas as pd

    return not isinstance(index, pd.MultiIndex) and _native_column(index, _FRAME_KINDS, tz_ok=False)


def _encode_dataframe(df: Any) -> Encoded:
    import pandas as pd

    if not df.columns.is_unique:
        dupes = sorted({str(c) for c in df.columns[df.columns.duplicated()]})[:5]
        raise errors.UnsupportedXComValueError(
            f"DataFrame has duplicate column labels {dupes}: a stored table needs unique column names. "
            "Rename the columns before returning the DataFrame."
        )
    columns = summarize_columns([(c, t) for c, t in df.dtypes.items()])
    shape = [int(df.shape[0]), int(df.shape[1])]
    labels_ok = not isinstance(df.columns, pd.MultiIndex) and all(
        isinstance(c, (str, int)) for c in df.columns
    )
    if labels_ok and _native_index(df.index) and all(_native_column(df[c]) for c in df.columns):
        return Encoded(
            payload=df,
            type="pandas.DataFrame",
            encoding="vineyard",
            shape=shape,
            columns=columns,
            extra=_index_freq(df.index),
        )
    payload, extra = _arrow_storage(_to_arrow(df, "DataFrame"))
    return Encoded(
        payload=payload, type="pandas.DataFrame", encoding="arrow", shape=shape, columns=columns, extra=extra
    )


def _encode_series(series: Any) -> Encoded:
    name = series.name
    if name is not None and not isinstance(name, (str, int, float)):
        raise errors.UnsupportedXComValueError(
            f"Series name {name!r} of type {type(name).__name__} cannot be recorded; use a str or int name."
        )
    base = {"type": "pandas.Series", "shape": [len(series)], "dtype": str(series.dtype)}
    native = _native_column(series, _SERIES_KINDS, tz_ok=False)
    if native and _native_index(series.index) and isinstance(name, (str, type(None))):
        return Encoded(payload=series, encoding="vineyard", extra=_index_freq(series.index), **base)
    table, extra = _arrow_storage(_to_arrow(series.to_frame(name="values"), "Series"))
    return Encoded(payload=table, encoding="arrow", extra={"series_name": name, **extra}, **base)


def _index_freq(index: Any) -> dict[str, Any]:
    """A DatetimeIndex's ``freq`` (e.g. ``D``), which Vineyard drops; restored on read."""
    freq = getattr(index, "freqstr", None)
    return {"index_freq": freq} if freq else {}


def _to_arrow(frame: Any, what: str) -> Any:
    import pyarrow as pa

    try:
        return pa.Table.from_pandas(frame)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise errors.UnsupportedXComValueError(
            f"pandas {what} cannot be stored: Vineyard cannot hold its dtypes natively and Arrow "
            f"cannot convert it ({type(exc).__name__}: {exc}). Give mixed-type object columns one "
            "type (e.g. df[col].astype(str)) before returning it."
        ) from exc


def _arrow_storage(table: Any) -> tuple[Any, dict[str, Any]]:
    """The table as Vineyard will store it, and what :func:`decode` needs to undo that.

    Tested on vineyard 0.24.2: string/binary/list columns come back in their ``large_*`` forms
    (recorded in ``cast_columns``, narrowed on read); timestamp (with or without zone),
    duration, date, time and float16 columns are stored but cannot be read back at all, so they
    are stored as zero-copy integer views of the same width, their type recorded in
    ``view_columns`` and restored (again zero-copy) on read. A RecordBatch is stored as a Table.
    """
    import pyarrow as pa

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    extra: dict[str, Any] = {}
    narrow = [i for i, f in enumerate(table.schema) if _widen(f.type) != f.type]
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


def _restore_arrow(stored: Any, extra: dict[str, Any]) -> Any:
    """Undo :func:`_arrow_storage` on a Table read from Vineyard."""
    import pyarrow as pa

    schema = stored.schema
    for i in extra.get("cast_columns", []):
        schema = schema.set(i, schema.field(i).with_type(_narrow(schema.field(i).type)))
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


def _widen(t: Any) -> Any:
    return _retype(t, large=True)


def _narrow(t: Any) -> Any:
    return _retype(t, large=False)


def decode(stored: Any, ref: VineyardReference) -> Any:
    """Turn what ``client.get`` returned into the value the producer returned.

    Zero-copy for the ``vineyard`` encoding except where a cast is recorded (string ndarrays,
    Arrow ``string`` columns: those columns are copied). ``arrow`` encoding copies.
    """
    import numpy as np

    extra = ref.extra or {}
    if ref.encoding == "json":
        return bytes(np.asarray(stored, dtype=np.uint8)).decode("utf-8")
    if ref.encoding == "arrow":
        frame = _restore_arrow(stored, extra).to_pandas()
        if ref.type == "pandas.Series":
            return frame.iloc[:, 0].rename(extra.get("series_name"))
        return frame
    if ref.type == "numpy.ndarray" and "astype" in extra:
        return np.asarray(stored).astype(extra["astype"])
    if ref.type in ("pyarrow.Table", "pyarrow.RecordBatch", "pyarrow.ChunkedArray", "pyarrow.Array"):
        import pyarrow as pa

        stored = _restore_arrow(stored, extra)
        if ref.type == "pyarrow.ChunkedArray":
            return stored.column(0)
        if ref.type == "pyarrow.Array":  # one chunk: no copy
            return stored.column(0).combine_chunks()
        if ref.type == "pyarrow.RecordBatch":
            columns = [c.combine_chunks() for c in stored.columns]
            return pa.RecordBatch.from_arrays(columns, schema=stored.schema)
        return stored
    if "index_freq" in extra:
        import pandas as pd

        # A new index object over the same values; the data stays zero-copy.
        stored.index = pd.DatetimeIndex(stored.index, freq=extra["index_freq"])
    return stored


def check_read_back(encoded: Encoded, value: Any, stored: Any, ref: VineyardReference) -> None:
    """Compare the structure of ``stored`` (what ``client.get`` returned) with ``value`` (what was put).

    Checks type, shape, dtypes, column labels and index; not every element (that would cost a
    full scan). Runs in the producer, so a value Vineyard mangles fails at push time.

    :raises VineyardReadBackError: naming the XCom and the first difference found.
    """
    if encoded.encoding == "arrow":
        # Compare the stored table only; Arrow's own to_pandas() is trusted to rebuild pandas.
        problem = _difference(encoded.payload, stored, lenient_strings=True)
    else:
        problem = _difference(value, decode(stored, ref))
    if problem:
        raise errors.VineyardReadBackError(
            f"XCom {ref.key!r} of task {ref.producer!r} (DAG {ref.dag_id!r}, run {ref.run_id!r}): "
            f"Vineyard stored the {encoded.type} but reading it back gives a different value ({problem}). "
            "Nothing was recorded. Convert the value to a plainer form (numeric/str columns, flat "
            "index, or an Arrow table) before returning it."
        )


def _difference(value: Any, got: Any, lenient_strings: bool = False) -> str | None:
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


def encode_json(text: str) -> Encoded:
    """Store Airflow-serialised JSON ``text`` (above the inline threshold) as a ``uint8`` tensor.

    Raw ``bytes`` cannot be named in Vineyard (Blobs cannot be persisted, vineyard.md section 4),
    so the text travels as a 1-D ``uint8`` array and :func:`decode` turns it back into ``str``.
    """
    import numpy as np

    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return Encoded(payload=data, type="json", encoding="json", shape=[int(data.size)])
