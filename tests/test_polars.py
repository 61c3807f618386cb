"""polars values through the backend on a real vineyardd: back as polars, numeric columns zero-copy."""

from __future__ import annotations

import json
from collections import namedtuple
from datetime import date, datetime

import numpy as np
import polars as pl
import pytest
from conftest import in_object

from fluid_airflow.exceptions import UnsupportedXComValueError
from fluid_airflow.vineyard.data.reference import VineyardReference
from fluid_airflow.vineyard.xcom import VineyardXComBackend as Backend

Result = namedtuple("Result", ["value"])
SCOPE = {"dag_id": "polars", "run_id": "manual__2026-12-04T00:00:00+00:00", "task_id": "t", "map_index": -1}


def push(value, key):
    return json.loads(json.dumps(Backend.serialize_value(value, key=key, **SCOPE)))


def pull(db_value):
    return Backend.deserialize_value(Result(db_value))


FRAME = pl.DataFrame(
    {
        "f": [1.5, None, 3.0],
        "i": [1, 2, 3],
        "u8": pl.Series([1, 2, 3], dtype=pl.UInt8),
        "b": [True, False, None],
        "s": ["x", None, "zz"],
        "cat": pl.Series(["a", "b", "a"], dtype=pl.Categorical),
        "d": [date(2020, 1, 1), date(2020, 1, 2), None],
        "t": [datetime(2020, 1, 1, 12), None, datetime(2020, 1, 3)],
        "tz": pl.Series([datetime(2020, 1, 1)] * 3).dt.replace_time_zone("Europe/Paris"),
        "l": [[1, 2], [], None],
    }
)


def test_polars_dataframe_round_trips_with_its_schema(vineyardd):
    db_value = push(FRAME, "frame")
    assert db_value["type"] == "polars.DataFrame" and db_value["shape"] == [3, len(FRAME.columns)]
    got = pull(db_value)
    assert isinstance(got, pl.DataFrame)
    assert got.schema == FRAME.schema
    assert got.equals(FRAME, null_equal=True)


def test_polars_series_round_trips_with_its_name(vineyardd):
    series = pl.Series("price", [1.0, 2.5, None])
    got = pull(push(series, "series"))
    assert isinstance(got, pl.Series) and got.name == "price" and got.dtype == pl.Float64
    assert got.equals(series, check_dtypes=True, check_names=True, null_equal=True)
    empty = pl.DataFrame({"a": pl.Series([], dtype=pl.Int32)})
    assert pull(push(empty, "empty")).schema == empty.schema


def test_polars_numeric_columns_are_zero_copy_views(vineyard_client):
    n = 100_000
    df = pl.DataFrame({"f": np.arange(n, dtype=np.float64), "i": np.arange(n), "s": ["ab"] * n})
    db_value = push(df, "zero_copy")
    got = pull(db_value)
    for name in ("f", "i"):
        data = got[name].to_numpy(allow_copy=False)
        assert in_object(vineyard_client, db_value, data.ctypes.data), name
        assert not data.flags.writeable
    db_value = push(df["f"], "zero_copy_series")
    series = pull(db_value)
    assert in_object(vineyard_client, db_value, series.to_numpy(allow_copy=False).ctypes.data)


def test_lazy_frame_is_refused_with_a_message(vineyard_client):
    before = int(vineyard_client.status.memory_usage)
    with pytest.raises(UnsupportedXComValueError, match=r"LazyFrame.*collect\(\)") as err:
        push(FRAME.lazy(), "lazy")
    assert str(err.value).startswith("XCom 'lazy' of task 't'")
    assert int(vineyard_client.status.memory_usage) == before
    with pytest.raises(UnsupportedXComValueError, match="LazyFrame"):
        push({"plan": FRAME.lazy()}, "lazy_in_dict")


def test_reference_records_polars_dtypes(vineyardd):
    ref = VineyardReference.from_json(push(FRAME, "ref"))
    assert ref.encoding == "arrow" and ref.columns["s"] == "String" and ref.columns["f"] == "Float64"
