"""pandas values through the backend as Arrow, on a real vineyardd: exact dtypes, zero-copy, read-only.

Runs under pandas 2 (``.venv``) and pandas 3 (``.venv-pandas3``, built by ``make test``).
"""

from __future__ import annotations

import json
from collections import namedtuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import in_object

from fluid_airflow.exceptions import UnsupportedXComValueError, VineyardReadBackError
from fluid_airflow.vineyard.data import codec, frames, strings
from fluid_airflow.vineyard.lifecycle import admission
from fluid_airflow.vineyard.xcom import VineyardXComBackend as Backend

Result = namedtuple("Result", ["value"])
SCOPE = {"dag_id": "frames", "run_id": "manual__2026-12-04T00:00:00+00:00", "task_id": "t", "map_index": -1}
PANDAS3 = int(pd.__version__.split(".")[0]) >= 3
STRINGS = ["a", None, "ccc", "a", "é✓"]
# pandas 3's default string dtype ("str"): Arrow storage, NaN as missing value; pandas 2.3 has
# the same dtype under its explicit name.
NAN_STR = pd.StringDtype("pyarrow", na_value=np.nan)


def push(value, key):
    return json.loads(json.dumps(Backend.serialize_value(value, key=key, **SCOPE)))


def pull(db_value):
    return Backend.deserialize_value(Result(db_value))


def round_trip(value, key):
    got = pull(push(value, key))
    if isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(got, value, check_exact=True)
        assert list(got.dtypes) == list(value.dtypes)  # exact dtype objects, storage included
    else:
        pd.testing.assert_series_equal(got, value, check_exact=True)
        assert got.dtype == value.dtype and got.name == value.name
    return got


STRING_FLAVOURS = {
    "object": pd.Series(STRINGS, dtype=object),
    "string_python": pd.Series(STRINGS, dtype=pd.StringDtype("python")),
    "string_pyarrow": pd.Series(STRINGS, dtype=pd.StringDtype("pyarrow")),
    "str_nan": pd.Series(STRINGS, dtype=NAN_STR),
    "arrow_string": pd.Series(STRINGS, dtype=pd.ArrowDtype(pa.string())),
    "arrow_large_string": pd.Series(STRINGS, dtype=pd.ArrowDtype(pa.large_string())),
    "categorical": pd.Series(STRINGS, dtype="category"),
}


@pytest.mark.parametrize("flavour", list(STRING_FLAVOURS))
def test_every_string_flavour_keeps_its_exact_dtype(vineyardd, flavour):
    column = STRING_FLAVOURS[flavour]
    df = pd.DataFrame({"s": column, "n": np.arange(5.0)})
    got = round_trip(df, f"flavour_{flavour}")
    assert type(got["s"].dtype) is type(column.dtype) and got["s"].dtype == column.dtype
    assert repr(got["s"].dtype) == repr(column.dtype)
    round_trip(column.rename("named"), f"flavour_series_{flavour}")


def test_default_string_column_with_nulls(vineyardd):
    # pandas 3: the default dtype of a string column is "str"; pandas 2: object.
    df = pd.DataFrame({"s": ["x", None, "z", None], "v": [1, 2, 3, 4]})
    assert (df["s"].dtype == NAN_STR) is PANDAS3
    got = round_trip(df, "default_str_nulls")
    assert got["s"].isna().tolist() == [False, True, False, True]


def test_string_indexes_and_labels_come_back(vineyardd):
    df = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}, index=pd.Index(["r1", "r2"], name="row"))
    round_trip(df, "labels")
    round_trip(pd.DataFrame({0: [1.0], 1: ["x"]}), "int_labels")
    multi = pd.DataFrame({"a": [1, 2], "b": ["x", "y"], "v": [0.1, 0.2]}).set_index(["a", "b"])
    round_trip(multi, "multi")
    columns = pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")]))
    round_trip(columns, "multicolumns")
    round_trip(pd.DataFrame({"v": [1, 2]}, index=pd.Index(["p", "q"], dtype=object)), "object_index")


def test_labels_arrow_cannot_keep_fail_at_push(vineyard_client):
    before = int(vineyard_client.status.memory_usage)
    with pytest.raises(VineyardReadBackError, match="columns"):
        push(pd.DataFrame({0: [1.0], "b": [2.0]}), "mixed_labels")  # Arrow makes both str
    assert int(vineyard_client.status.memory_usage) == before


def test_numeric_and_arrow_string_columns_are_zero_copy(vineyard_client, monkeypatch):
    n = 50_000
    df = pd.DataFrame(
        {
            "f": np.where(np.arange(n) % 10 == 0, np.nan, np.arange(n, dtype=np.float64)),  # NaN too
            "i": np.arange(n, dtype=np.int64),
            "t": pd.date_range("2020-01-01", periods=n, freq="s"),
            "s": pd.Series([f"v{i % 100}" for i in range(n)], dtype=NAN_STR),
            "a": pd.Series([f"w{i % 7}" for i in range(n)], dtype=pd.ArrowDtype(pa.large_string())),
        }
    )
    db_value = push(df, "zero_copy")

    def no_python_strings(column):
        raise AssertionError("Arrow-backed strings were turned into Python objects")

    monkeypatch.setattr(strings, "decode", no_python_strings)
    got = pull(db_value)
    pd.testing.assert_frame_equal(got, df)
    for name in ("f", "i", "t"):
        data = got[name].to_numpy()
        assert in_object(vineyard_client, db_value, data.ctypes.data), name
    for name in ("s", "a"):
        chunks = got[name].array.__arrow_array__().chunks
        assert len(chunks) == 1
        assert in_object(vineyard_client, db_value, chunks[0].buffers()[2].address), name


def test_object_strings_are_rebuilt_deduplicated(vineyardd):
    n = 10_000
    df = pd.DataFrame({"s": pd.Series(["carrier-a", "carrier-b"] * (n // 2), dtype=object)})
    got = pull(push(df, "dedup"))
    assert got["s"].dtype == object
    assert len({id(v) for v in got["s"].to_numpy()}) == 2  # one str object per distinct value


def test_object_strings_sharing_few_objects_are_stored_by_identity(vineyardd):
    n = strings.SHARED_FROM * 2
    values = np.array(["AA", "B6", None, "ünïcode"], dtype=object)[np.arange(n) % 4]
    df = pd.DataFrame({"s": pd.Series(values, dtype=object), "v": np.arange(n)})  # pandas 3: not str
    encoded = codec.encode(df)
    assert pa.types.is_dictionary(encoded.payload.schema.field("s").type)  # 4 objects, converted once
    got = round_trip(df, "shared_strings")
    assert got["s"].dtype == object and got["s"].isna().sum() == n // 4
    assert len({id(v) for v in got["s"].to_numpy()}) == 4  # one object per distinct value
    # Mostly distinct objects, or not only strings: every cell converted by Arrow, as before.
    distinct = pd.DataFrame({"s": pd.Series([f"id-{i}" for i in range(n)], dtype=object)})
    assert codec.encode(distinct).payload.schema.field("s").type == pa.string()
    round_trip(distinct, "distinct_strings")
    mixed = pd.DataFrame({"s": np.array(["a", 1], dtype=object)[np.arange(n) % 2]})
    with pytest.raises(UnsupportedXComValueError, match="Arrow cannot convert"):
        push(mixed, "mixed_objects")


def test_one_mutability_rule_for_numeric_and_mixed_frames(vineyardd):
    numeric = pd.DataFrame({"a": np.arange(6.0), "b": np.arange(6)})
    mixed = numeric.assign(
        n=pd.array([1, None, 3, 4, 5, 6], dtype="Int64"),
        c=pd.Categorical(list("xyxyxy")),
        o=pd.Series(list("pqrstu"), dtype=object),
    )
    for key, df in (("numeric", numeric), ("mixed", mixed)):
        got = pull(push(df, f"mutability_{key}"))
        with pytest.raises(ValueError, match="read-only"):
            got.loc[got.a > 1, "b"] = 0
        columns = ["a", "b"] if key == "numeric" else ["a", "b", "n", "c", "o"]
        for column in columns:
            with pytest.raises(ValueError, match="read-only"):
                got.iloc[0, got.columns.get_loc(column)] = got.iloc[1][column]
        mine = got.copy()
        mine.loc[mine.a > 1, "b"] = 0
        assert mine["b"].tolist() == [0, 1, 0, 0, 0, 0]


def test_series_is_zero_copy_and_read_only(vineyard_client):
    series = pd.Series(np.arange(1000.0), name="x")
    db_value = push(series, "series_zc")
    got = pull(db_value)
    pd.testing.assert_series_equal(got, series, check_exact=True)
    assert in_object(vineyard_client, db_value, got.to_numpy().ctypes.data)
    with pytest.raises(ValueError, match="read-only"):
        got.iloc[0] = 5.0


def test_admission_size_comes_from_arrow_buffers(vineyard_client):
    n = 20_000
    df = pd.DataFrame({"s": [f"value-{i}" for i in range(n)], "v": np.arange(n, dtype=np.float64)})
    encoded = codec.encode(df)
    assert isinstance(encoded.payload, pa.Table)
    # Stored as Arrow holds it: object strings as built by from_pandas, pandas 3 `str` as its own.
    want = pa.string() if df["s"].dtype == object else pa.large_string()
    assert encoded.payload.schema.field("s").type == want
    estimate = admission.payload_nbytes(encoded.payload)
    # The IPC stream's size (Arrow's buffers, padded, plus the schema), nothing per cell.
    assert encoded.payload.nbytes < estimate < encoded.payload.nbytes + 4096
    before = int(vineyard_client.status.memory_usage)
    push(df, "admission_size")
    allocated = int(vineyard_client.status.memory_usage) - before
    assert estimate == allocated


def test_read_back_check_converts_only_the_first_rows(vineyardd, monkeypatch):
    seen = []
    decode = frames.decode

    def spy(stored, ref):
        seen.append(stored.num_rows)
        return decode(stored, ref)

    monkeypatch.setattr(frames, "decode", spy)
    df = pd.DataFrame({"s": [f"v{i}" for i in range(5000)], "v": np.arange(5000)})
    db_value = push(df, "head_check")
    assert seen == [frames.HEAD_ROWS]
    monkeypatch.undo()
    pd.testing.assert_frame_equal(pull(db_value), df)


@pytest.mark.parametrize("flavour", list(STRING_FLAVOURS))
def test_small_frames_inline_or_in_vineyard_keep_every_string_dtype(vineyardd, monkeypatch, flavour):
    # At the provider's default floor a small frame stays inline only when Airflow's serde
    # (parquet) gives it back exactly; which flavours do differs between pandas 2 and 3.
    from fluid_airflow import config
    from fluid_airflow.vineyard.data import inline

    monkeypatch.setenv(
        "AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR", config.OPTIONS["inline_payload_floor"]["default"]
    )
    column = STRING_FLAVOURS[flavour]
    df = pd.DataFrame({"s": column, "n": np.arange(5.0)})
    db_value = push(df, f"small_{flavour}")
    assert inline.is_inline(db_value) or db_value["__vineyard_ref__"] == 1
    got = round_trip(df, f"small_again_{flavour}")
    assert repr(got["s"].dtype) == repr(column.dtype)


def test_pandas_default_string_frame_stays_inline(vineyardd, monkeypatch):
    from fluid_airflow import config
    from fluid_airflow.vineyard.data import inline

    monkeypatch.setenv(
        "AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR", config.OPTIONS["inline_payload_floor"]["default"]
    )
    df = pd.DataFrame({"s": ["x", None, "z"], "v": [1.0, np.nan, 3.0]})  # object (pandas 2) or str (3)
    db_value = push(df, "default_small")
    assert inline.is_inline(db_value)
    got = pull(db_value)
    pd.testing.assert_frame_equal(got, df, check_exact=True)
    assert repr(got["s"].dtype) == repr(df["s"].dtype)
    with pytest.raises(VineyardReadBackError, match="columns"):  # the same rule as for big frames
        push(pd.DataFrame({0: [1.0], "b": [2.0]}), "mixed_labels_small")


def test_decimal_and_zoned_timestamp_columns_round_trip(vineyardd):
    # Vineyard's Table builder could not store decimals nor read zoned timestamps back (v0.24.2).
    import decimal

    df = pd.DataFrame(
        {
            "d": pd.Series([decimal.Decimal("1.50"), None, decimal.Decimal("-2.25")], dtype=object),
            "t": pd.date_range("2026-01-01", periods=3, freq="h", tz="Europe/Paris"),
        }
    )
    round_trip(df, "decimals")


def test_values_arrow_cannot_convert_are_refused_naming_the_fix(vineyardd):
    huge = pd.DataFrame({"n": pd.Series([1, 2**70], dtype=object)})  # beyond int64: OverflowError
    with pytest.raises(UnsupportedXComValueError, match=r"OverflowError.*beyond 64 bits as str"):
        push(huge, "huge_int")
    complex_frame = pd.DataFrame({"z": np.array([1 + 2j, 3j])})
    with pytest.raises(UnsupportedXComValueError, match=r"complex columns as two float columns"):
        push(complex_frame, "complex")
