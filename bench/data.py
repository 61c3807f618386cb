"""The values handed off, and the consumer's full scan of each.

Four kinds, each built to a requested payload size (bytes of the values themselves, i.e. the
Arrow size: 8 bytes per number, 4-byte offsets plus UTF-8 text per string):

- ``ndarray``: float64 matrix with 16 columns (a feature matrix), 128 bytes per row;
- ``df_numeric``: pandas DataFrame, 8 float64 + 8 int64 columns, 128 bytes per row;
- ``df_strings``: pandas DataFrame, 4 float64 + 2 int64 columns and two ``object`` string columns
  like flights' ``carrier`` (2 characters, 16 distinct values) and ``tailnum`` (6 characters,
  4,000 distinct values), 64 bytes per row;
- ``arrow_table``: the same columns as ``df_strings`` as a pyarrow Table (``string`` columns);
- ``df_str``: the same columns as ``df_strings`` with pandas' Arrow-backed ``str`` dtype (pandas 3's
  default string dtype; pandas 2.3 has the same dtype as ``StringDtype("pyarrow", na_value=nan)``);
- ``polars_df``: the same columns as a polars DataFrame (``String`` columns);
- ``torch_tensor``: the ``ndarray`` matrix as a float64 torch tensor.

``df_str``, ``polars_df`` and ``torch_tensor`` are compared with pickle and Arrow IPC only, up to
1 GiB (:data:`LIMITED`); ``polars_df`` and ``torch_tensor`` need polars and torch installed.

Values are random (SFC64, fixed seed), so nothing compresses by accident.
"""

from __future__ import annotations

from typing import Any

KINDS = ("ndarray", "df_numeric", "df_strings", "arrow_table", "df_str", "polars_df", "torch_tensor")

LABELS = {
    "ndarray": "float64 ndarray",
    "df_numeric": "numeric DataFrame",
    "df_strings": "DataFrame with string columns",
    "arrow_table": "Arrow table (with string columns)",
    "df_str": "DataFrame with pandas `str` (Arrow) string columns",
    "polars_df": "polars DataFrame (with string columns)",
    "torch_tensor": "float64 torch tensor",
}

ROW_BYTES = {
    "ndarray": 128,
    "df_numeric": 128,
    "df_strings": 64,
    "arrow_table": 64,
    "df_str": 64,
    "polars_df": 64,
    "torch_tensor": 128,
}
# Kinds compared with these peers only, up to this size (bytes), and the module they need.
LIMITED = {"df_str": None, "polars_df": "polars", "torch_tensor": "torch"}
LIMITED_PEERS = ("vineyard", "pickle-shm", "arrow-ipc-shm")
LIMITED_MAX = 1 << 30

CARRIERS = ("9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV")
N_TAILNUMS = 4000
SCAN_SLICE = 1 << 16  # rows per slice when scanning Arrow string columns


class PolarsSource:
    """A polars DataFrame to be, held as its Arrow table: polars' thread pool does not survive
    ``fork`` (a polars call in a child forked after the parent built a frame hangs, tested with
    polars 2.1), so the producer worker keeps the table and each forked put builds the frame
    (``pl.from_arrow``) before its clock starts."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def make(self) -> Any:
        import polars as pl

        return pl.from_arrow(self.table)


def rows_for(kind: str, nbytes: int) -> int:
    """Rows of a ``kind`` value whose payload is ``nbytes`` bytes (rounded down, at least 1)."""
    return max(1, nbytes // ROW_BYTES[kind])


def make(kind: str, nbytes: int, seed: int = 0) -> tuple[Any, int]:
    """Build a ``kind`` value of about ``nbytes`` payload bytes.

    :returns: the value and its exact payload size in bytes.
    """
    import numpy as np

    rng = np.random.Generator(np.random.SFC64(seed))
    rows = rows_for(kind, nbytes)
    if kind in ("ndarray", "torch_tensor"):
        arr = rng.random((rows, 16))
        if kind == "torch_tensor":
            import torch

            return torch.from_numpy(arr), int(arr.nbytes)
        return arr, int(arr.nbytes)
    if kind == "df_numeric":
        import pandas as pd

        columns: dict[str, Any] = {f"f{i}": rng.random(rows) for i in range(8)}
        columns |= {f"i{i}": rng.integers(0, 1_000_000, rows) for i in range(8)}
        return pd.DataFrame(columns, copy=False), rows * 128
    numbers = {f"f{i}": rng.random(rows) for i in range(4)}
    numbers |= {f"i{i}": rng.integers(0, 1_000_000, rows) for i in range(2)}
    carrier = rng.integers(0, len(CARRIERS), rows)
    tailnum = rng.integers(0, N_TAILNUMS, rows)
    tailnums = [f"N{i:05d}" for i in range(N_TAILNUMS)]
    # numbers 48 + carrier (4 + 2) + tailnum (4 + 6) bytes per row
    payload = rows * 64
    if kind == "df_strings":
        import pandas as pd

        carriers_obj = np.array(CARRIERS, dtype=object)
        tailnums_obj = np.array(tailnums, dtype=object)
        strings = {"carrier": carriers_obj[carrier], "tailnum": tailnums_obj[tailnum]}
        return pd.DataFrame(numbers | strings, copy=False), payload
    if kind in ("arrow_table", "df_str", "polars_df"):
        import pyarrow as pa

        string = pa.string() if kind == "arrow_table" else pa.large_string()
        strings = {
            "carrier": pa.array(CARRIERS, string).take(pa.array(carrier)),
            "tailnum": pa.array(tailnums, string).take(pa.array(tailnum)),
        }
        table = pa.table({**{k: pa.array(v) for k, v in numbers.items()}, **strings})
        if kind == "arrow_table":
            return table, int(table.nbytes)
        if kind == "polars_df":
            return PolarsSource(table), payload
        import pandas as pd

        str_dtype = pd.StringDtype("pyarrow", na_value=np.nan)
        frame = pd.DataFrame(numbers, copy=False)
        for name, column in strings.items():
            frame[name] = pd.Series(str_dtype.__from_arrow__(pa.chunked_array([column])), copy=False)
        return frame, payload
    raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")


def scan(value: Any) -> float:
    """Touch every value: the sum of every numeric column and the total length of every string.

    Works on what any peer hands back for any kind (numpy, pandas, pyarrow); the result only
    exists so the work cannot be skipped.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if isinstance(value, np.ndarray):
        return float(value.sum())
    if isinstance(value, pd.DataFrame):
        total = 0.0
        for name in value.columns:
            array = value[name].array
            if hasattr(array, "__arrow_array__"):  # Arrow-backed strings: scan the Arrow data
                total += _scan_arrow(array.__arrow_array__())
                continue
            column = value[name].to_numpy()
            if column.dtype == object:
                total += sum(map(len, column))
            else:
                total += float(column.sum())
        return total
    if isinstance(value, pa.Table):
        return sum(_scan_arrow(column) for column in value.columns)
    module = type(value).__module__.split(".")[0]
    if module == "polars":
        return sum(_scan_polars(value[name]) for name in value.columns)
    if module == "torch":
        return float(value.sum())
    raise TypeError(f"cannot scan a {type(value).__name__}")


def _scan_polars(series: Any) -> float:
    """Sum of a numeric polars Series, total UTF-8 length of a string one (in slices)."""
    if not series.dtype.is_numeric():
        return sum(
            series.slice(start, SCAN_SLICE).str.len_bytes().sum() or 0
            for start in range(0, len(series), SCAN_SLICE)
        )
    return float(series.sum())


def _scan_arrow(column: Any) -> float:
    """Sum of a numeric Arrow column, total length of a string one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return pc.sum(column).as_py() or 0
    total = 0
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    # In slices: a whole-column binary_length would allocate 4-8 bytes per row, which would
    # count as the consumer's memory.
    for chunk in chunks:
        for start in range(0, len(chunk), SCAN_SLICE):
            total += pc.sum(pc.binary_length(chunk.slice(start, SCAN_SLICE))).as_py() or 0
    return total
