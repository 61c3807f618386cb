"""How each XCom value type is stored in Vineyard, read back, and checked.

Vineyard 0.24.2 stores numpy arrays natively, but loses or corrupts some shapes silently (tested:
``tests/test_backend.py``, ``tests/test_frames.py``): string ndarrays come back as ``object``, its
Arrow builders returned ``string`` as ``large_string`` and could not read temporal columns back, its
pandas builder drops extension dtypes and pandas 3 strings, and anything unknown silently falls
back to pickle. So tables go as Arrow IPC streams (:mod:`fluid_airflow.vineyard.client.arrow_stream`,
every Arrow type as it is), this module decides the encoding up front, and
:func:`check_read_back` compares what Vineyard holds with what was put, in the producer,
before the XCom is recorded.

Encodings (``VineyardReference.encoding``):
- ``vineyard``: numpy arrays as Vineyard ``Tensor``; Arrow Tables/RecordBatches/Arrays as an
  IPC-stream object (older references: Vineyard ``Table``, :mod:`.arrowtypes`). Read zero-copy.
- ``arrow``: pandas DataFrames and Series (:mod:`.frames`) and polars DataFrames/Series
  (:mod:`.optional_types`), as an IPC-stream object with what is needed to rebuild them exactly.
- ``tensor``: torch tensors (:mod:`.optional_types`), as a Vineyard ``Tensor`` of their bytes.
- ``json``: Airflow-serialised JSON text above the inline threshold, as a ``uint8`` tensor.
- ``vineyard`` for pandas types: references written before pandas went through Arrow
  (Vineyard's own ``DataFrame``/``Series``); still read.

Mutability, one rule for every type: a value read from Vineyard is read-only (in-place writes
raise ``ValueError: assignment destination is read-only``; torch tensors see
:mod:`.optional_types`); call ``.copy()``/``.clone()`` before changing it.
"""

from __future__ import annotations

from typing import Any

# Module import, not names: Airflow may load this module while fluid_airflow.exceptions is
# still initialising (it imports airflow, whose config loads the XCom backend).
from fluid_airflow import exceptions as errors
from fluid_airflow.vineyard.data import frames, optional_types
from fluid_airflow.vineyard.data.arrowtypes import arrow_storage, restore_arrow
from fluid_airflow.vineyard.data.difference import value_difference
from fluid_airflow.vineyard.data.encoded import Encoded
from fluid_airflow.vineyard.data.reference import VineyardReference, summarize_columns

__all__ = ["Encoded", "check_read_back", "decode", "encode", "encode_json", "is_vineyard_type"]

VINEYARD_MODULES = ("numpy", "pandas", "pyarrow", *optional_types.MODULES)
# numpy dtype kinds Vineyard's Tensor round-trips exactly: bool, ints, uints, floats,
# timedelta64, datetime64. Complex and bytes ("S") do not come back (tested).
_NATIVE_KINDS = "biufmM"
_ARROW_TYPES = ("pyarrow.Table", "pyarrow.RecordBatch", "pyarrow.ChunkedArray", "pyarrow.Array")


def is_vineyard_type(value: object) -> bool:
    """True for numpy arrays, pandas DataFrames/Series, pyarrow Tables/RecordBatches/Arrays, and
    polars DataFrames/Series/LazyFrames and torch tensors (:mod:`.optional_types`).

    Checks the module name first so plain values never import numpy, pandas or pyarrow.
    """
    # MRO, not just the type: values read from Vineyard are subclasses such as
    # vineyard.data.tensor.ndarray, and users subclass DataFrame.
    modules = {c.__module__.split(".")[0] for c in type(value).__mro__}
    if not modules.intersection(VINEYARD_MODULES):
        return False
    if modules.intersection(optional_types.MODULES):
        return optional_types.is_supported(value)
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
        unusual types, Arrow conversion errors, polars LazyFrames, GPU or sparse tensors).
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if optional_types.is_supported(value):
        return optional_types.encode(value)
    if isinstance(value, np.ndarray):
        return _encode_ndarray(value)
    if isinstance(value, pd.DataFrame):
        return frames.encode_dataframe(value)
    if isinstance(value, pd.Series):
        return frames.encode_series(value)
    if isinstance(value, (pa.Table, pa.RecordBatch)):
        kind = "pyarrow.Table" if isinstance(value, pa.Table) else "pyarrow.RecordBatch"
        payload, extra = arrow_storage(value)
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
        payload, extra = arrow_storage(pa.table({"values": value}))
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


def decode(stored: Any, ref: VineyardReference) -> Any:
    """Turn what ``client.get`` returned into the value the producer returned.

    Zero-copy except where a column must be rebuilt: string ndarrays, object string columns of
    pandas frames, nullable and categorical pandas columns (see :mod:`.frames`), and the
    ``string`` columns of older references, which Vineyard's builders stored as ``large_string``.
    """
    import numpy as np

    extra = ref.extra or {}
    if ref.encoding == "json":
        return bytes(np.asarray(stored, dtype=np.uint8)).decode("utf-8")
    if ref.type.split(".")[0] in optional_types.MODULES:
        return optional_types.decode(stored, ref)
    if ref.encoding == "arrow":
        return frames.decode(stored, ref)
    if ref.type == "numpy.ndarray" and "astype" in extra:
        return np.asarray(stored).astype(extra["astype"])
    if ref.type == "numpy.ndarray":
        # A plain ndarray view (no copy; read-only, its base keeps Vineyard's mapping alive), not
        # vineyard.data.tensor.ndarray, whose reductions give 0-d arrays where numpy gives scalars
        # (json.dumps(a.mean()) fails) and which inline arrays are not.
        return np.asarray(stored)
    if ref.type in _ARROW_TYPES:
        return _decode_arrow(stored, ref.type, extra)
    if "index_freq" in extra:  # a pandas value stored by Vineyard's pandas builder (older refs)
        import pandas as pd

        # A new index object over the same values; the data stays zero-copy.
        stored.index = pd.DatetimeIndex(stored.index, freq=extra["index_freq"])
    return stored


def _decode_arrow(stored: Any, kind: str, extra: dict[str, Any]) -> Any:
    import pyarrow as pa

    stored = restore_arrow(stored, extra)
    if kind == "pyarrow.ChunkedArray":
        return stored.column(0)
    if kind == "pyarrow.Array":  # one chunk: no copy
        return stored.column(0).combine_chunks()
    if kind == "pyarrow.RecordBatch":
        columns = [c.combine_chunks() for c in stored.columns]
        return pa.RecordBatch.from_arrays(columns, schema=stored.schema)
    return stored


def check_read_back(encoded: Encoded, value: Any, stored: Any, ref: VineyardReference) -> None:
    """Compare ``stored`` (what ``client.get`` returned) with ``value`` (what was put).

    Checks type, shape, dtypes/schema, column labels and index, never every element: Arrow
    tables (pandas and polars frames too) compare their schema and metadata and convert only
    their first rows; arrays and tensors are zero-copy views. Runs in the producer, so a value
    Vineyard mangles fails at push time.

    :raises VineyardReadBackError: naming the XCom and the first difference found.
    """
    if encoded.type.split(".")[0] in optional_types.MODULES:
        problem = optional_types.check(encoded, value, stored, ref)
    elif encoded.encoding == "arrow":
        problem = frames.check(encoded, value, stored, ref)
    elif encoded.type in _ARROW_TYPES:
        problem = _arrow_head_difference(encoded, value, stored, ref)
    else:
        problem = value_difference(value, decode(stored, ref))
    if problem:
        raise errors.VineyardReadBackError(
            f"XCom {ref.key!r} of task {ref.producer!r} (DAG {ref.dag_id!r}, run {ref.run_id!r}): "
            f"Vineyard stored the {encoded.type} but reading it back gives a different value ({problem}). "
            "Nothing was recorded. Convert the value to a plainer form (numeric/str columns, flat "
            "index, or an Arrow table) before returning it."
        )


def _arrow_head_difference(encoded: Encoded, value: Any, stored: Any, ref: VineyardReference) -> str | None:
    if stored.num_rows != encoded.payload.num_rows:
        return f"got {stored.num_rows} rows instead of {encoded.payload.num_rows}"
    rows = min(frames.HEAD_ROWS, len(value))
    return value_difference(value.slice(0, rows), decode(stored.slice(0, rows), ref))


def encode_json(text: str) -> Encoded:
    """Store Airflow-serialised JSON ``text`` (above the inline threshold) as a ``uint8`` tensor.

    Raw ``bytes`` cannot be named in Vineyard (Blobs cannot be persisted, docs/design.md §3),
    so the text travels as a 1-D ``uint8`` array and :func:`decode` turns it back into ``str``.
    """
    import numpy as np

    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return Encoded(payload=data, type="json", encoding="json", shape=[int(data.size)])
