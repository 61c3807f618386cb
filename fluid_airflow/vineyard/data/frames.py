"""pandas DataFrames and Series in Vineyard as Arrow tables, read back zero-copy with exact dtypes.

Why not Vineyard's own pandas builder (``python/vineyard/data/dataframe.py`` at v0.24.2): it
stores one Python-level blob per block, takes ``block.values[0]`` for extension blocks (a
pandas 3 ``str`` column becomes its first value), and its resolver builds one Python ``str``
per string cell. Instead every pandas value is converted here with Arrow's own
``pa.Table.from_pandas`` (pandas metadata: index, column labels, dtypes) and stored as one Arrow
IPC stream in one blob (:mod:`fluid_airflow.vineyard.client.arrow_stream`): each buffer is copied
once, and read back in place.

What comes back (pandas 2.2+ and 3.x):

- numeric, bool and datetime columns: zero-copy numpy views of shared memory
  (``Table.to_pandas(split_blocks=True)``; a column with nulls or several chunks is copied);
- Arrow-backed string columns (pandas 3 ``str``, ``string[pyarrow]``, ``ArrowDtype``): zero-copy,
  the Arrow arrays wrap the shared buffers;
- object string columns: rebuilt as Python ``str`` objects, one per distinct value per chunk
  (Arrow's ``deduplicate_objects``), also under pandas 3, which would otherwise turn them into
  ``str`` columns;
- nullable (``Int64``), categorical, interval, period columns: rebuilt by Arrow (copied).

Strings are built once, by Arrow (``string``), and every dtype, index and column label comes back
as the producer had it.

Mutability, one rule for every type: **a value read from Vineyard is read-only: in-place writes
into its numpy data raise ``ValueError: assignment destination is read-only`` whatever the dtype
(pandas 2 and 3 alike), so call ``.copy()`` before changing it.** Arrow-backed columns are
immutable Arrow arrays, which pandas replaces (never writes into) on assignment.
"""

from __future__ import annotations

import json
from typing import Any

# Module import, not names: Airflow may load this module while fluid_airflow.exceptions is
# still initialising (it imports airflow, whose config loads the XCom backend).
from fluid_airflow import exceptions as errors
from fluid_airflow.vineyard.data import strings
from fluid_airflow.vineyard.data.arrowtypes import arrow_storage, restore_arrow, widen
from fluid_airflow.vineyard.data.difference import value_difference
from fluid_airflow.vineyard.data.encoded import Encoded
from fluid_airflow.vineyard.data.reference import VineyardReference, summarize_columns

HEAD_ROWS = 16  # rows the read-back check converts to pandas (types, labels, index)
# Bytes from which Arrow's pandas conversions use its thread pool: starting the pool costs ~4-5 ms
# in a fresh task process (measured), more than converting a small frame takes on one thread.
THREADS_FROM = 64 << 20
_ARRAY_ATTRS = ("_ndarray", "_data", "_mask", "_codes")  # numpy data inside pandas arrays


def encode_dataframe(df: Any) -> Encoded:
    """``df`` as an Arrow table for Vineyard, with what :func:`decode` needs.

    :raises UnsupportedXComValueError: duplicate column labels, or columns Arrow cannot convert
        (mixed-type object columns).
    """
    if not df.columns.is_unique:
        dupes = sorted({str(c) for c in df.columns[df.columns.duplicated()]})[:5]
        raise errors.UnsupportedXComValueError(
            f"DataFrame has duplicate column labels {dupes}: a stored table needs unique column names. "
            "Rename the columns before returning the DataFrame."
        )
    table, extra = _to_table(df, "DataFrame")
    return Encoded(
        payload=table,
        type="pandas.DataFrame",
        encoding="arrow",
        shape=[int(df.shape[0]), int(df.shape[1])],
        columns=summarize_columns([(c, t) for c, t in df.dtypes.items()]),
        extra=extra,
    )


def encode_series(series: Any) -> Encoded:
    """``series`` as a one-column Arrow table (column ``values``); its name goes in ``extra``.

    :raises UnsupportedXComValueError: a name that is not str, int, float or None, or values
        Arrow cannot convert.
    """
    name = series.name
    if name is not None and not isinstance(name, (str, int, float)):
        raise errors.UnsupportedXComValueError(
            f"Series name {name!r} of type {type(name).__name__} cannot be recorded; use a str or int name."
        )
    table, extra = _to_table(series.to_frame(name="values"), "Series")
    return Encoded(
        payload=table,
        type="pandas.Series",
        encoding="arrow",
        shape=[len(series)],
        dtype=str(series.dtype),
        extra={"series_name": name, **extra},
    )


def _to_table(frame: Any, what: str) -> tuple[Any, dict[str, Any]]:
    import pyarrow as pa

    try:
        threads = frame.shape[0] * frame.shape[1] * 8 >= THREADS_FROM  # about: 8 bytes a cell
        ready = _arrow_ready(frame)
        table = pa.Table.from_pandas(ready, preserve_index=None, nthreads=None if threads else 1)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise errors.UnsupportedXComValueError(
            f"pandas {what} cannot be stored: Arrow cannot convert it ({type(exc).__name__}: {exc}). "
            "Give mixed-type object columns one type (e.g. df[col].astype(str)); store complex columns "
            "as two float columns (.real, .imag), sparse ones dense (df.sparse.to_dense()), and Python "
            "ints beyond 64 bits as str, before returning it."
        ) from exc
    table, rebuild = _exact_dtypes(table, frame)
    payload, extra = arrow_storage(table)
    if rebuild:
        extra["rebuild"] = rebuild
    objects = _object_string_levels(frame.index)
    if objects:
        extra["object_index_levels"] = objects  # pandas 3 would read them back as str
    freq = getattr(frame.index, "freqstr", None)  # a DatetimeIndex's freq, which Arrow drops
    if freq:
        extra["index_freq"] = freq
    return payload, extra


def _object_string_levels(index: Any) -> list[int]:
    """Positions of the index levels holding strings in an object dtype."""
    import numpy as np

    levels = [index.get_level_values(i) for i in range(index.nlevels)]
    return [i for i, lv in enumerate(levels) if lv.dtype == np.dtype(object) and lv.inferred_type == "string"]


def _arrow_ready(frame: Any) -> Any:
    """``frame`` with columns pre-converted to Arrow where ``from_pandas`` would waste a pass
    (a shallow copy; the data of numeric columns is not copied). Object string columns are left
    to ``from_pandas``, which checks and converts them in one pass into ``string`` (32-bit
    offsets, chunked past 2 GiB; measured 30% faster than building ``large_string``), unless
    their cells share few objects: then :func:`.strings.encode` stores them as a dictionary.

    - int, uint and float columns: wrapped without ``from_pandas``'s NaN-to-null scan (a full
      pass over every float column, measured ~0.16 s per GiB); NaN stays NaN, so the column
      needs no validity bitmap and reads back zero-copy even with NaNs.

    The columns' pandas metadata is set back to their numpy dtype by :func:`_exact_dtypes`.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    found = []
    for i in range(frame.shape[1]):
        column = frame.iloc[:, i]
        dtype = column.dtype
        if not isinstance(dtype, np.dtype) or not len(column):
            continue
        if dtype.kind in "iuf":
            found.append((i, pa.array(column.to_numpy())))
        elif dtype.kind == "O":
            shared = strings.encode(column.to_numpy())
            if shared is not None:
                found.append((i, shared))
    if not found:
        return frame
    shallow = frame.copy(deep=False)
    for i, array in found:
        shallow.isetitem(i, pd.arrays.ArrowExtensionArray(array))
    return shallow


def _exact_dtypes(table: Any, frame: Any) -> tuple[Any, dict[str, Any]]:
    """``table`` with pandas metadata fixed up, and how :func:`decode` rebuilds Arrow-backed columns.

    Columns :func:`_arrow_ready` converted get their numpy dtype back in the metadata.
    Arrow-backed columns (``StringDtype``, ``ArrowDtype``) are rebuilt by
    :func:`decode` around their Arrow data, since the dtype names pandas writes do not say
    which one they were (``string`` for both storages, ``string[pyarrow]`` also for
    ``ArrowDtype(pa.string())``); their metadata says ``object`` so Arrow leaves them alone.
    """
    import numpy as np
    import pandas as pd

    meta = table.schema.pandas_metadata
    if meta is None:
        return table, {}
    rebuild: dict[str, Any] = {}
    for i in range(frame.shape[1]):
        dtype = frame.dtypes.iloc[i]
        entry = meta["columns"][i]
        if isinstance(dtype, pd.StringDtype):
            rebuild[str(i)] = {"string": dtype.storage, "nan": dtype.na_value is not pd.NA}
        elif isinstance(dtype, pd.ArrowDtype):
            rebuild[str(i)] = "arrow"
        elif isinstance(dtype, np.dtype) and entry["numpy_type"] != str(dtype):  # by _arrow_ready
            kind = "unicode" if dtype.kind == "O" else str(dtype)
            entry.update(pandas_type=kind, numpy_type=str(dtype))
            continue
        else:
            continue
        entry.update(pandas_type="unicode", numpy_type="object")
    metadata = {**table.schema.metadata, b"pandas": json.dumps(meta).encode()}
    return table.replace_schema_metadata(metadata), rebuild


def decode(stored: Any, ref: VineyardReference) -> Any:
    """The pandas DataFrame or Series behind ``ref`` from the Arrow table Vineyard returned.

    Zero-copy where Arrow allows (see the module docstring); the result is read-only.
    """
    extra = ref.extra or {}
    frame = _to_pandas(restore_arrow(stored, extra), extra)
    if "index_freq" in extra:
        import pandas as pd

        frame.index = pd.DatetimeIndex(frame.index, freq=extra["index_freq"])
    if ref.type == "pandas.Series":
        series = frame.iloc[:, 0]  # a view, not rename()'s copy
        series.name = extra.get("series_name")
        return series
    return frame


def _to_pandas(table: Any, extra: dict[str, Any]) -> Any:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from pyarrow.pandas_compat import _pandas_api

    rebuilt: dict[int, Any] = {}
    specs = {int(i): spec for i, spec in (extra.get("rebuild") or {}).items()}
    for i in set(_object_string_columns(table)) - set(specs):
        # Under pandas 3 Arrow turns every string column into ``str``; a column that was object
        # is converted on its own, without a pandas dtype, to stay object (deduplicated).
        rebuilt[i] = strings.decode(table.column(i))
    for i, spec in specs.items():
        rebuilt[i] = _arrow_backed(table.column(i), spec)
    # Stand-ins Arrow converts for free (untouched calloc'd zeros, zero-copy), then replaced: a
    # column of nulls would become a filled object array (measured 0.3 s and 128 MiB per 16M rows).
    stand_in = pa.array(np.zeros(table.num_rows, dtype=np.int8)) if rebuilt else None
    for i in rebuilt:
        table = table.set_column(i, pa.field(table.field(i).name, pa.int8()), stand_in)
    frame = table.to_pandas(split_blocks=True, use_threads=table.get_total_buffer_size() >= THREADS_FROM)
    for i, values in rebuilt.items():
        # A Series of explicit dtype: an array alone would be inferred as str under pandas 3.
        frame.isetitem(i, pd.Series(values, dtype=values.dtype, index=frame.index, copy=False))
    levels = extra.get("object_index_levels")
    if levels and _pandas_api.uses_string_dtype():
        frame.index = _object_levels(frame.index, levels)
    read_only(frame)
    return frame


def _object_levels(index: Any, levels: list[int]) -> Any:
    """``index`` with the given levels as object dtype (pandas 3 reads string levels as str)."""
    import pandas as pd

    if not isinstance(index, pd.MultiIndex):
        return index.astype(object)
    return index.set_levels([index.levels[i].astype(object) for i in levels], level=levels)


def _arrow_backed(column: Any, spec: Any) -> Any:
    """A pandas array around ``column`` (no copy for Arrow storage) as ``spec`` says."""
    import numpy as np
    import pandas as pd

    if spec == "arrow":
        return pd.arrays.ArrowExtensionArray(column)
    storage, nan = spec["string"], spec["nan"]
    try:
        dtype = pd.StringDtype(storage, na_value=np.nan if nan else pd.NA)
    except TypeError:  # pandas 2.2: the NaN variant is a storage name of its own
        dtype = pd.StringDtype(f"{storage}_numpy" if nan else storage)
    return dtype.__from_arrow__(column)


def _object_string_columns(table: Any) -> list[int]:
    """Data columns stored from object strings that Arrow would not give back as object strings:
    dictionary-encoded ones (:mod:`.strings`; Arrow makes them categorical), and all of them when
    this pandas would make them ``str`` (pandas 3)."""
    import pyarrow as pa
    from pyarrow.pandas_compat import _pandas_api

    meta = table.schema.pandas_metadata
    if meta is None:
        return []
    string_dtype = _pandas_api.uses_string_dtype()
    index_columns = {c for c in meta["index_columns"] if isinstance(c, str)}
    found = []
    for i, (field, entry) in enumerate(zip(table.schema, meta["columns"], strict=False)):
        if entry.get("numpy_type") != "object" or field.name in index_columns:
            continue
        if strings.is_strings(field.type) and (string_dtype or pa.types.is_dictionary(field.type)):
            found.append(i)
    return found


def read_only(value: Any) -> Any:
    """Make every numpy array inside a pandas DataFrame/Series read-only (in place); returns it."""
    for block in value._mgr.blocks:
        values = block.values
        if hasattr(values, "_pa_array"):
            continue  # Arrow-backed: immutable already
        arrays = [values] if hasattr(values, "flags") else [getattr(values, a, None) for a in _ARRAY_ATTRS]
        for array in arrays:
            if array is not None and hasattr(array, "flags"):
                array.flags.writeable = False
    return value


def check(encoded: Encoded, value: Any, stored: Any, ref: VineyardReference) -> str | None:
    """The first difference between what was put and what Vineyard holds, or None.

    Compares the stored table's schema and pandas metadata with the payload's (no data is
    read), then converts the first :data:`HEAD_ROWS` rows to pandas and compares them with the
    producer's (dtypes, labels, index type and names, values).
    """
    import pandas as pd

    payload = encoded.payload
    if stored.num_rows != payload.num_rows or stored.schema.names != payload.schema.names:
        return f"got {stored.num_rows} rows, columns {stored.schema.names[:5]}"
    for want, got in zip(payload.schema, stored.schema, strict=True):
        if got.type != want.type and got.type != widen(want.type):
            return f"column {want.name!r} has type {got.type} instead of {want.type}"
    if stored.schema.pandas_metadata != payload.schema.pandas_metadata:
        return "the pandas metadata differs"
    rows = min(HEAD_ROWS, payload.num_rows)
    head = decode(stored.slice(0, rows), ref)
    want = value.iloc[:rows]
    if isinstance(want.index, pd.RangeIndex):
        want = want.set_axis(head.index)  # Arrow rebuilds a RangeIndex only at full length
    return value_difference(want, head)
