"""pandas ``object`` string columns to Arrow and back, fast when values repeat.

An object column holds pointers to Python objects, and columns with few distinct values usually
point at few objects: pyarrow's ``to_pandas`` (``deduplicate_objects``, the default), so
``read_parquet``, hands back one ``str`` per distinct value, and so do ``.map`` / ``.take`` of a
small list. :func:`encode` groups the column by *object identity* (``pd.factorize`` of the
pointers: a hash per cell, no string is read), converts only the distinct objects, and stores a
``dictionary<int32, string>`` column; :func:`decode` rebuilds the object array from that
dictionary with one ``take``. Measured on 2 cores, 16.7M cells of 4,000 distinct objects: ~3x
faster than ``from_pandas``'s conversion of every cell; the read skips hashing the strings.

Columns whose objects are mostly distinct (over 1 in 4), or hold anything but ``str`` and
missing values (None, NaN), are left to ``from_pandas``, which converts every cell.
"""

from __future__ import annotations

from typing import Any

SHARED_FROM = 1 << 16  # cells: shorter columns convert fast enough cell by cell
MAX_DISTINCT = 4  # at most 1 distinct object in this many cells


def encode(values: Any) -> Any:
    """A ``dictionary<int32, string>`` Arrow array of the object ndarray ``values``, or None when
    it is short, its objects are mostly distinct, or some are not ``str`` / None / NaN."""
    import ctypes

    import numpy as np
    import pandas as pd
    import pyarrow as pa

    n = len(values)
    if n < SHARED_FROM:
        return None
    values = np.ascontiguousarray(values)
    # The pointers, read as integers: the array keeps every object alive while they are used.
    pointers = np.ctypeslib.as_array((ctypes.c_uint64 * n).from_address(values.ctypes.data))
    codes, distinct = pd.factorize(pointers)
    if len(distinct) * MAX_DISTINCT > n:
        return None
    objects = [ctypes.cast(int(p), ctypes.py_object).value for p in distinct]
    if not all(isinstance(o, str) or o is None or (isinstance(o, float) and o != o) for o in objects):
        return None
    dictionary = pa.array(objects, type=pa.string(), from_pandas=True)
    indices = codes.astype(np.int32)
    missing = np.asarray(dictionary.is_null(), dtype=bool)
    mask = missing[indices] if missing.any() else None
    return pa.DictionaryArray.from_arrays(pa.array(indices, mask=mask), dictionary)


def decode(column: Any) -> Any:
    """An object ndarray of ``column``'s strings (None where null), one ``str`` per distinct value
    per chunk: from the stored dictionary, or from a dictionary encoding made here for a plain
    ``string`` column.

    Arrow's ``to_pandas(deduplicate_objects=True)`` does this under pandas 2, but under pandas 3
    pyarrow makes any string column ``str`` (``_array_like_to_pandas``, pyarrow 26), and under
    both it makes a dictionary column categorical; so the strings are rebuilt here.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = []
    for chunk in column.chunks:
        encoded = chunk if pa.types.is_dictionary(chunk.type) else pc.dictionary_encode(chunk)
        uniques = encoded.dictionary.to_numpy(zero_copy_only=False)
        indices = encoded.indices
        if indices.null_count:
            uniques = np.append(uniques, np.array([None], dtype=object))
            indices = indices.fill_null(len(uniques) - 1)
        parts.append(uniques[indices.to_numpy()])
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty(0, dtype=object)


def is_strings(arrow_type: Any) -> bool:
    """True for the Arrow types object string columns are stored as."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))
