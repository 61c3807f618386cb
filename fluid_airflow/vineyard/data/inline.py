"""Small numpy arrays and pandas DataFrames kept inline in Airflow's DB instead of in Vineyard.

A value whose payload is below ``[fluid] inline_payload_floor`` bytes gains nothing from shared
memory (see ``bench/inline_floor.py``), but in Vineyard it would be invisible in the Airflow UI
and lost when vineyardd restarts. So it stays in the XCom row, as a tagged JSON object that
starts with a one-line ``summary``::

    {"summary": "numpy.ndarray float64 10, 80 B inline", "__vineyard_inline__": 1,
     "type": "numpy.ndarray", "dtype": "<f8", "shape": [10], "values": [0.0, 1.0, ...]}

- ``numpy.ndarray`` (dtype kinds Vineyard also stores: bool, ints, floats, datetime64,
  timedelta64, str): ``values`` (the nested list, readable) when JSON carries it exactly, else
  ``base64`` of the C-order bytes (NaN, infinity, datetimes). Airflow's serde has no ndarray
  serializer (only numpy scalars: ``airflow/sdk/serde/serializers/numpy.py``, task-sdk 1.3.2).
- ``pandas.DataFrame``: Airflow's own serde form (parquet, hex; ``airflow/sdk/serde/serializers/
  pandas.py``, task-sdk 1.3.2) under ``airflow_serde``, read back with Airflow's serde.

Only values that come back exactly (type, dtype, shape, index, column labels, NaN) are kept
inline: each one is decoded again and compared before the row is written. Everything else
(pandas Series, Arrow, polars, torch, subclasses other than Vineyard's own ndarray view, frames
parquet changes) goes to Vineyard as before, so a consumer gets the type the producer returned.

The wrapper uses no key of Airflow's serde (``__classname__``...), so a row can itself pass
through ``airflow.sdk.serde.serialize`` unchanged (``@task.fluid`` sends its inputs that way).
"""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

from fluid_airflow.units import format_bytes

MARKER = "__vineyard_inline__"
VERSION = 1
# numpy dtype kinds kept inline: those Vineyard stores too (codec._NATIVE_KINDS) plus str, so
# that whether a value is accepted never depends on its size.
_ARRAY_KINDS = "biufmMU"


def is_inline(value: object) -> bool:
    """True for the DB form produced by :func:`encode`."""
    return isinstance(value, dict) and MARKER in value


def payload_bytes(value: Any) -> int | None:
    """Bytes of a plain ndarray's or DataFrame's data (frames: ``memory_usage(deep=True)``, index
    included), or None for any other value (those are never kept inline by this module)."""
    import pandas as pd

    if _is_plain_array(value):
        return int(value.nbytes)
    if type(value) is pd.DataFrame:
        return int(value.memory_usage(deep=True, index=True).sum())
    return None


def _is_plain_array(value: Any) -> bool:
    """A numpy ndarray, or Vineyard's view of one: ``vineyard.data.tensor.ndarray`` is a bare
    subclass that only allows attributes and names itself ``ndarray`` (``python/vineyard/data/
    tensor.py``, v6d v0.24.2), and what a consumer computes from its inputs is often one. Both
    come back as a plain ndarray; other subclasses (matrix, masked, users') keep their type only
    through Vineyard's codec, which refuses or keeps them."""
    import numpy as np

    cls = type(value)
    return cls is np.ndarray or (isinstance(value, np.ndarray) and cls.__module__.startswith("vineyard."))


def encode(value: Any, floor: int) -> dict[str, Any] | None:
    """The inline DB form of ``value``, or None when it belongs in Vineyard: not a plain ndarray
    or DataFrame, payload not below ``floor`` bytes, or no exact inline form."""
    import pandas as pd

    # A lower bound tells a big frame apart without asking pandas for sizes (its first
    # memory_usage call in a task process costs ~5 ms, measured): every cell takes at least one
    # bit (Arrow-backed booleans), so rows x columns / 8 bytes at least.
    if type(value) is pd.DataFrame and value.shape[0] * value.shape[1] // 8 >= floor:
        return None
    if type(value) is pd.DataFrame and int(value.memory_usage(deep=False, index=True).sum()) >= floor:
        return None
    size = payload_bytes(value)
    if size is None or size >= floor:
        return None
    import numpy as np

    body = _encode_array(value) if isinstance(value, np.ndarray) else _encode_frame(value)
    if body is None:
        return None
    summary = describe(body["type"], list(np.shape(value)), getattr(value, "dtype", None), size)
    row = {"summary": summary, MARKER: VERSION, **body, "bytes": size}
    try:
        same = _same(value, decode(json.loads(json.dumps(row, allow_nan=False))))
    except Exception:
        return None  # e.g. a column type parquet cannot hold: Vineyard's codec decides (and explains)
    return row if same else None


def decode(row: dict[str, Any]) -> Any:
    """The value of an inline row.

    :raises ValueError: ``row`` is of an inline version or type this package does not read.
    """
    if row.get(MARKER) != VERSION:
        raise ValueError(f"not an inline XCom value of version {VERSION}: {row!r:.200}")
    if row.get("type") == "numpy.ndarray":
        return _decode_array(row)
    if row.get("type") == "pandas.DataFrame":
        from airflow.sdk import serde

        form = row["airflow_serde"]
        return serde.deserialize(
            {serde.CLASSNAME: form["classname"], serde.VERSION: form["version"], serde.DATA: form["data"]}
        )
    raise ValueError(f"inline XCom value of unknown type {row.get('type')!r}")


def describe(kind: str, shape: list[int], dtype: Any, size: int, where: str = "inline") -> str:
    """A value in a few words, e.g. ``numpy.ndarray float64 3 x 4, 96 B inline`` (``where``:
    ``inline`` or ``in Vineyard``, for the leaves of a tree row's summary)."""
    dims = " x ".join(str(n) for n in shape) or "scalar"
    return f"{kind}{' ' + str(dtype) if dtype is not None else ''} {dims}, {format_bytes(size)} {where}"


def _encode_array(arr: Any) -> dict[str, Any] | None:
    import numpy as np

    if arr.dtype.kind not in _ARRAY_KINDS:
        return None  # object, structured, bytes, complex: Vineyard's codec explains why not
    body: dict[str, Any] = {"type": "numpy.ndarray", "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if arr.dtype.kind in "biufU":
        values = arr.tolist()
        try:
            json.dumps(values, allow_nan=False)
        except ValueError:
            values = None  # NaN or infinity: JSON cannot carry them, the bytes can
        exact = (
            values is not None
            and np.array(values, dtype=arr.dtype).reshape(arr.shape).tobytes() == arr.tobytes()
        )
        if exact:
            return {**body, "values": values}
    return {**body, "base64": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")}


def _decode_array(row: dict[str, Any]) -> Any:
    import numpy as np

    dtype, shape = np.dtype(row["dtype"]), tuple(row["shape"])
    if "values" in row:
        return np.array(row["values"], dtype=dtype).reshape(shape)
    return np.frombuffer(base64.b64decode(row["base64"]), dtype=dtype).reshape(shape).copy()


def _encode_frame(frame: Any) -> dict[str, Any] | None:
    from airflow.sdk import serde

    try:
        with warnings.catch_warnings():  # a trial: a frame parquet would change goes to Vineyard
            warnings.simplefilter("ignore")
            form = serde.serialize(frame)
    except Exception:
        return None  # e.g. duplicate or non-str column labels: Vineyard's codec decides
    if not isinstance(form, dict) or serde.CLASSNAME not in form:
        return None
    carried = {"classname": form[serde.CLASSNAME], "version": form[serde.VERSION], "data": form[serde.DATA]}
    return {"type": "pandas.DataFrame", "shape": list(frame.shape), "airflow_serde": carried}


def _same(value: Any, got: Any) -> bool:
    """True when ``got`` is ``value`` exactly: same type, dtypes, labels, index and cells (NaN
    equal to NaN, -0.0 not equal to 0.0 for arrays)."""
    import numpy as np
    import pandas as pd

    from fluid_airflow.vineyard.data.difference import value_difference

    if isinstance(value, np.ndarray):  # Vineyard's view comes back as what it names itself
        if type(got) is not np.ndarray or value_difference(value, got) is not None:
            return False
    elif type(got) is not type(value) or value_difference(value, got) is not None:
        return False
    if isinstance(value, np.ndarray):
        return bool(np.ascontiguousarray(value).tobytes() == np.ascontiguousarray(got).tobytes())
    try:
        pd.testing.assert_frame_equal(got, value, check_exact=True, check_freq=True, check_flags=True)
    except AssertionError:
        return False
    return bool(got.columns.equals(value.columns)) and got.attrs == value.attrs
