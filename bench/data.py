"""The values handed off, and the consumer's full scan of each.

Four kinds, each built to a requested payload size (bytes of the values themselves, i.e. the
Arrow size: 8 bytes per number, 4-byte offsets plus UTF-8 text per string):

- ``ndarray``: float64 matrix with 16 columns (a feature matrix), 128 bytes per row;
- ``df_numeric``: pandas DataFrame, 8 float64 + 8 int64 columns, 128 bytes per row;
- ``df_strings``: pandas DataFrame, 4 float64 + 2 int64 columns and two ``object`` string columns
  like flights' ``carrier`` (2 characters, 16 distinct values) and ``tailnum`` (6 characters,
  4,000 distinct values), 64 bytes per row;
- ``arrow_table``: the same columns as ``df_strings`` as a pyarrow Table (``string`` columns).

Values are random (SFC64, fixed seed), so nothing compresses by accident.
"""

from __future__ import annotations

from typing import Any

KINDS = ("ndarray", "df_numeric", "df_strings", "arrow_table")

LABELS = {
    "ndarray": "float64 ndarray",
    "df_numeric": "numeric DataFrame",
    "df_strings": "DataFrame with string columns",
    "arrow_table": "Arrow table (with string columns)",
}

ROW_BYTES = {"ndarray": 128, "df_numeric": 128, "df_strings": 64, "arrow_table": 64}

CARRIERS = ("9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV")
N_TAILNUMS = 4000
SCAN_SLICE = 1 << 16  # rows per slice when scanning Arrow string columns


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
    if kind == "ndarray":
        arr = rng.random((rows, 16))
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
    if kind == "arrow_table":
        import pyarrow as pa

        strings = {
            "carrier": pa.array(CARRIERS, pa.string()).take(pa.array(carrier)),
            "tailnum": pa.array(tailnums, pa.string()).take(pa.array(tailnum)),
        }
        table = pa.table({**{k: pa.array(v) for k, v in numbers.items()}, **strings})
        return table, int(table.nbytes)
    raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")


def scan(value: Any) -> float:
    """Touch every value: the sum of every numeric column and the total length of every string.

    Works on what any peer hands back for any kind (numpy, pandas, pyarrow); the result only
    exists so the work cannot be skipped.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(value, np.ndarray):
        return float(value.sum())
    if isinstance(value, pd.DataFrame):
        total = 0.0
        for name in value.columns:
            column = value[name].to_numpy()
            if column.dtype == object:
                total += sum(map(len, column))
            else:
                total += float(column.sum())
        return total
    if isinstance(value, pa.Table):
        total = 0.0
        for column in value.columns:
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                # In slices: a whole-column binary_length would allocate 4-8 bytes per row,
                # which would count as the consumer's memory.
                for chunk in column.chunks:
                    for start in range(0, len(chunk), SCAN_SLICE):
                        lengths = pc.binary_length(chunk.slice(start, SCAN_SLICE))
                        total += pc.sum(lengths).as_py() or 0
            else:
                total += pc.sum(column).as_py() or 0
        return total
    raise TypeError(f"cannot scan a {type(value).__name__}")
