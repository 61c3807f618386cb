"""Small arrays and DataFrames inline in the DB row, and the one-line ``summary`` of every row of ours.

Real vineyardd (fixture ``vineyardd``); the floor is the provider's default here (conftest sets 0
for the other modules). Runs under pandas 2 and pandas 3.
"""

from __future__ import annotations

import json
from collections import namedtuple

import numpy as np
import pandas as pd
import pytest
from conftest import own_row
from xcom_values import VALUES, assert_same

from fluid_airflow import config
from fluid_airflow.exceptions import UnsupportedXComValueError
from fluid_airflow.vineyard.data import inline, tree
from fluid_airflow.vineyard.data.reference import is_reference
from fluid_airflow.vineyard.xcom import VineyardXComBackend as Backend
from fluid_airflow.vineyard.xcom import references_only

Result = namedtuple("Result", ["value"])
SCOPE = {"dag_id": "inl", "run_id": "manual__2026-12-04T00:00:00+00:00", "task_id": "t", "map_index": -1}
DEFAULT_FLOOR = int(config.OPTIONS["inline_payload_floor"]["default"])
# What Airflow's serde or our array form cannot carry exactly: a DatetimeIndex's freq (parquet
# drops it); Series, Arrow and polars have no inline form at all.
TO_VINEYARD = {name for name in VALUES if not name.startswith(("ndarray", "df_"))} | {"df_datetime_index"}


@pytest.fixture(autouse=True)
def default_floor(monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR", str(DEFAULT_FLOOR))


def push(value, key="return_value", **scope):
    return json.loads(json.dumps(Backend.serialize_value(value, key=key, **{**SCOPE, **scope})))


def pull(db_value):
    return Backend.deserialize_value(Result(db_value))


def used(client) -> int:
    return int(client.status.memory_usage)


@pytest.mark.parametrize("name", list(VALUES))
def test_small_values_stay_inline_exactly_or_go_to_vineyard(vineyard_client, name):
    value = VALUES[name]
    before = used(vineyard_client)
    db_value = push(value, key=name)
    if name in TO_VINEYARD or inline.payload_bytes(value) >= DEFAULT_FLOOR:
        assert is_reference(db_value)
    else:
        assert inline.is_inline(db_value) and used(vineyard_client) == before  # nothing in Vineyard
        assert next(iter(db_value)) == "summary" and "inline" in db_value["summary"]
    got = pull(db_value)
    assert type(got) is type(value) or is_reference(db_value)  # Vineyard returns views of its own
    assert_same(got, value)


def test_floor_decides_and_zero_sends_everything_to_vineyard(vineyardd, monkeypatch):
    below = np.arange(DEFAULT_FLOOR // 8 - 1, dtype=np.float64)
    at = np.arange(DEFAULT_FLOOR // 8, dtype=np.float64)
    assert below.nbytes < DEFAULT_FLOOR == at.nbytes
    assert inline.is_inline(push(below, key="below")) and is_reference(push(at, key="at"))
    tiny = pd.DataFrame(np.arange(12.0).reshape(3, 4), columns=list("abcd"))
    assert inline.is_inline(push(tiny, key="tiny"))
    monkeypatch.setenv("AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR", "0")
    assert is_reference(push(np.arange(10.0), key="zero")) and is_reference(push(tiny, key="tiny0"))


def test_bad_floor_fails_the_push_naming_the_option(vineyardd, monkeypatch):
    monkeypatch.setenv("AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR", "8k")
    with pytest.raises(ValueError, match=r"inline_payload_floor.*AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR"):
        push(np.arange(3.0), key="bad_floor")


def test_inline_array_is_readable_and_exact_with_nan_and_signed_zero(vineyardd):
    readable = push(np.arange(10.0), key="readable")  # the 80-byte array of the issue
    assert readable["values"] == list(np.arange(10.0)) and readable["summary"].startswith(
        "numpy.ndarray float64 10, 80 B inline"
    )
    odd = np.array([[1.5, np.nan], [-0.0, np.inf]], dtype=np.float32)
    db_value = push(odd, key="odd")
    assert "base64" in db_value  # JSON has no NaN: the bytes are kept instead
    got = pull(db_value)
    assert got.dtype == odd.dtype and got.shape == odd.shape and got.tobytes() == odd.tobytes()
    got[0, 0] = 2.0  # a new writable array, unlike a Vineyard view


def test_frame_with_nan_and_strings_round_trips_through_airflow_serde(vineyardd):
    frame = pd.DataFrame(
        {"x": [1.0, np.nan, 3.0], "s": ["a", None, "c"]}, index=pd.Index([5, 6, 7], name="i")
    )
    db_value = push(frame, key="frame_nan")
    assert inline.is_inline(db_value) and db_value["airflow_serde"]["classname"].startswith("pandas.")
    pd.testing.assert_frame_equal(pull(db_value), frame, check_exact=True)


def test_tree_row_starts_with_a_bounded_one_line_summary(vineyard_client):
    value = {"X": np.ones((2000, 4)), "y": np.arange(5.0), "n": 3, "parts": [pd.DataFrame({"a": [1]})] * 2}
    db_value = push(value, key="bundle")
    assert list(db_value)[:2] == ["summary", tree.TREE_MARKER]
    summary = db_value["summary"]
    assert summary.startswith(
        "dict of 4: X numpy.ndarray float64 2000 x 4, 62.50 KiB in Vineyard; y numpy.ndarray"
    )
    assert "n=3" in summary and "parts list of 2" in summary and "\n" not in summary
    assert len(tree.tree_refs(db_value)) == 1  # only X went to Vineyard
    got = pull(db_value)
    np.testing.assert_array_equal(got["X"], value["X"])
    assert_same(got["y"], value["y"]) and got["n"] == 3
    pd.testing.assert_frame_equal(got["parts"][1], value["parts"][1])
    long = push({f"k{i}": np.arange(3.0) for i in range(40)}, key="many")
    assert len(long["summary"]) <= tree.MAX_SUMMARY and long["summary"].endswith("\u2026")
    assert push((np.arange(2), "x"), key="pair")["summary"].startswith("tuple of 2: numpy.ndarray int64 2")


def test_tree_rows_without_summary_still_read_and_purge(vineyard_client):
    db_value = push({"X": np.ones((2000, 4)), "n": 1}, key="old_tree")
    old = {k: v for k, v in db_value.items() if k != "summary"}  # as written before summaries
    assert tree.is_tree(old) and pull(old)["n"] == 1
    before = used(vineyard_client)
    Backend.purge(own_row(old, key="old_tree"))
    assert used(vineyard_client) < before


def test_purge_of_inline_rows_deletes_nothing(vineyard_client):
    big = push(np.ones(5000), key="keep_me")
    before = used(vineyard_client)
    Backend.purge(own_row(big).__class__(push(np.arange(4.0), key="small"), key="small", **SCOPE))
    Backend.purge(own_row(big).__class__(json.dumps(push({"a": np.arange(2)}, key="t")), key="t", **SCOPE))
    assert used(vineyard_client) == before and pull(big).sum() == 5000


def test_inline_rows_stay_rows_for_task_fluid_and_pass_airflow_serde(vineyardd):
    from airflow.sdk.serde import deserialize, serialize

    frame_row = push(pd.DataFrame({"a": [1.0, 2.0]}), key="for_pod")
    array_row = push(np.arange(3), key="for_pod_arr")
    with references_only():
        assert pull(frame_row) == frame_row and pull(array_row) == array_row
    sent = deserialize(serialize({"args": [frame_row, array_row]}))  # how @task.fluid ships inputs
    assert sent["args"] == [frame_row, array_row]
    assert push(array_row, key="again") == array_row  # a row pushed back (pod output) is kept


def test_summary_stays_one_line_whatever_the_keys(vineyardd):
    db_value = push({"two\nlines": np.arange(3.0), "n": 1}, key="odd_keys")
    assert "\n" not in db_value["summary"] and db_value["summary"].startswith("dict of 2: two lines numpy")


def test_inline_inputs_of_a_pod_have_no_location(vineyard_client):
    # FluidPodOperator(input_refs=...) may receive an upstream's inline row: nothing to place,
    # unlike a reference, and no error either.
    from fluid_airflow.fluid import pods
    from fluid_airflow.vineyard.lifecycle import locations

    small, big = push(np.arange(4.0), key="small_in"), push(np.ones(5000), key="big_in")
    assert pods.host_bytes([small]) == {} and pods.host_bytes([small, big]) == {big["host"]: big["bytes"]}
    assert locations.locate(vineyard_client, [small]) == {}
    assert sum(h.bytes for h in locations.locate(vineyard_client, [small, big]).values()) == big["bytes"]


def test_small_result_computed_from_a_vineyard_view_stays_inline(vineyardd, monkeypatch):
    # A consumer's result computed from its inputs (the demo's fitted coefficients) stays inline too.
    # Vineyard's own ndarray subclass counts as a plain array (inline._is_plain_array), though reads
    # now hand out plain ndarray views of it.
    monkeypatch.setenv("AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR", "0")
    view = pull(push(np.arange(20.0), key="from_vineyard"))
    assert type(view) is np.ndarray and not view.flags.writeable
    monkeypatch.setenv("AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR", str(DEFAULT_FLOOR))
    db_value = push(view[:5] * 2, key="computed")
    assert inline.is_inline(db_value) and db_value["values"] == [0.0, 2.0, 4.0, 6.0, 8.0]
    got = pull(db_value)
    assert type(got) is np.ndarray and got.dtype == np.float64
    with pytest.raises(UnsupportedXComValueError, match="mask"):  # other subclasses: not silently plain
        push(np.ma.masked_array([1.0, 2.0], mask=[0, 1]), key="masked")
