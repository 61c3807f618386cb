"""The Vineyard XCom backend against a real vineyardd: round trips, references, failures."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import namedtuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import in_object, own_row
from xcom_values import VALUES, assert_same

from fluid_airflow.exceptions import (
    UnsupportedXComValueError,
    VineyardObjectLostError,
    VineyardReadBackError,
)
from fluid_airflow.vineyard.data.naming import split_xcom_object_name
from fluid_airflow.vineyard.data.reference import VineyardReference, is_reference
from fluid_airflow.vineyard.xcom import VineyardXComBackend as Backend

Result = namedtuple("Result", ["value"])
SCOPE = {"dag_id": "d", "run_id": "manual__2026-11-29T00:00:00+00:00", "task_id": "t", "map_index": -1}


def push(value, key="return_value", **scope):
    """serialize_value as Airflow's XCom.set calls it; returns the JSON that lands in the DB."""
    stored = Backend.serialize_value(value, key=key, **{**SCOPE, **scope})
    return json.loads(json.dumps(stored))  # exactly what the DB keeps


def pull(db_value):
    return Backend.deserialize_value(Result(db_value))


def used(client) -> int:
    return int(client.status.memory_usage)


@pytest.mark.parametrize("name", list(VALUES))
def test_round_trip_keeps_value_dtype_and_index(vineyardd, name):
    value = VALUES[name]
    db_value = push(value, key=name)
    assert is_reference(db_value)
    got = pull(db_value)
    assert_same(got, value)
    repr(got)  # Airflow renders arguments with repr(): a mis-backed pandas object fails here


def test_reference_is_small_readable_json(vineyardd):
    df = pd.DataFrame({f"col_{i}_with_a_rather_long_name": np.arange(10.0) for i in range(200)})
    db_value = push(df, key="wide")
    text = json.dumps(db_value)
    assert len(text) < 2048
    ref = VineyardReference.from_json(db_value)
    assert ref.type == "pandas.DataFrame" and ref.shape == [10, 200]
    assert ref.bytes >= df.values.nbytes
    assert ref.object_id.startswith("o") and ref.host and ref.created
    assert split_xcom_object_name(ref.name) == {"prefix": "airflow", **SCOPE, "key": "wide"}


def test_native_values_are_zero_copy_views(vineyard_client):
    arr = np.random.default_rng(1).random(1 << 16)
    got = pull(push(arr, key="zc"))
    assert not got.flags.writeable and not got.flags.owndata
    assert vineyard_client.is_shared_memory(got.ctypes.data)
    # A plain ndarray, as an inline one is: reductions give numpy scalars, which JSON takes.
    assert type(got) is np.ndarray and type(got.mean()) is np.float64
    assert json.loads(json.dumps({"mean": float(got.mean()), "n": got.size}))["n"] == arr.size
    df = pd.DataFrame({"a": arr})
    db_value = push(df, key="zc_df")
    got_df = pull(db_value)
    assert in_object(vineyard_client, db_value, got_df["a"].to_numpy().ctypes.data)


def test_small_json_stays_inline_and_large_json_goes_to_vineyard(vineyardd, monkeypatch):
    assert push({"rmse": 1.5, "r2": 0.8}) == {"rmse": 1.5, "r2": 0.8}
    assert push(3) == 3 and push("text") == "text" and push(None) is None
    big = {"values": list(range(20_000))}
    db_value = push(big, key="big")
    assert is_reference(db_value) and db_value["encoding"] == "json"
    assert pull(db_value) == big
    monkeypatch.setenv("AIRFLOW__FLUID__INLINE_THRESHOLD", str(10**7))
    assert push(big, key="big2") == big


def test_two_runs_get_distinct_objects(vineyardd):
    a = push(np.zeros(10), run_id="scheduled__2026-01-01")
    b = push(np.ones(10), run_id="scheduled__2026-01-02")
    assert a["name"] != b["name"] and a["object_id"] != b["object_id"]
    assert pull(a).sum() == 0 and pull(b).sum() == 10


def test_repush_replaces_earlier_object_without_orphan(vineyard_client):
    push(np.zeros(1000), key="retry")  # make sure the name exists first
    before = used(vineyard_client)
    first = push(np.zeros(100_000), key="retry")
    second = push(np.ones(100_000), key="retry")
    assert first["object_id"] != second["object_id"]
    with pytest.raises(VineyardObjectLostError):
        pull(first)
    assert pull(second).sum() == 100_000
    Backend.purge(own_row(second))
    assert used(vineyard_client) <= before


def test_purge_accepts_json_text_and_frees_memory(vineyard_client):
    before = used(vineyard_client)
    db_value = push(np.zeros(200_000), key="purge_me")
    assert used(vineyard_client) >= before + 1_600_000
    Backend.purge(own_row(json.dumps(db_value)))
    assert used(vineyard_client) == before
    Backend.purge(own_row(json.dumps(db_value)))  # already gone: no error


def test_missing_object_error_names_run_task_and_fix(vineyard_client):
    db_value = push(np.arange(5.0), key="lost", task_id="make_features", run_id="manual__lost")
    vineyard_client.delete(vineyard_client.get_name(db_value["name"]))
    with pytest.raises(VineyardObjectLostError) as err:
        pull(db_value)
    message = str(err.value)
    assert "manual__lost" in message and "make_features" in message and "clear" in message.lower()


@pytest.mark.parametrize(
    "value, fragment",
    [
        (lambda x: x, "function"),
        (threading.Lock(), "lock"),
        (np.array([{"a": 1}, 2], dtype=object), "object"),
        (pd.DataFrame([[1, 2]], columns=["a", "a"]), "duplicate"),
        (pd.DataFrame({"o": [{"a": 1}, 2]}), "mixed-type"),
        (np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]), "mask"),
        (np.array([b"ab", b"c"]), "bytes"),
        (np.array([1 + 2j]), "complex"),
    ],
    ids=["lambda", "lock", "object-ndarray", "dup-columns", "mixed-object", "masked", "bytes", "complex"],
)
def test_unsupported_value_fails_at_push_and_stores_nothing(vineyard_client, value, fragment):
    before = used(vineyard_client)
    with pytest.raises(UnsupportedXComValueError) as err:
        push(value, key="bad", task_id="make_it")
    message = str(err.value)
    assert fragment in message.lower()
    assert message.startswith("XCom 'bad' of task 'make_it'")  # every push error names the task
    assert used(vineyard_client) == before


def test_value_read_from_vineyard_can_be_pushed_again(vineyardd):
    # Consumers often return (a slice of) what they received: a read-only view of shared memory.
    got = pull(push(np.arange(10.0), key="first"))
    assert not got.flags.writeable and not got.flags.owndata
    again = pull(push(got[2:], key="second"))
    np.testing.assert_array_equal(again, np.arange(2.0, 10.0))
    frame = pull(push(pd.DataFrame({"a": np.arange(3.0)}), key="frame"))
    pd.testing.assert_frame_equal(pull(push(frame, key="frame2")), frame)


def test_containers_of_arrays_store_each_leaf(vineyard_client):
    value = {"X": np.ones((4, 2)), "parts": (pd.DataFrame({"a": [1, 2]}), [np.zeros(3), "label"]), "n": 7}
    db_value = push(value, key="bundle")
    assert len(json.dumps(db_value)) < 2048
    got = pull(db_value)
    np.testing.assert_array_equal(got["X"], value["X"])
    assert isinstance(got["parts"], tuple) and got["parts"][1][1] == "label" and got["n"] == 7
    pd.testing.assert_frame_equal(got["parts"][0], value["parts"][0])
    before = used(vineyard_client)
    Backend.purge(own_row(db_value, key="bundle"))
    assert used(vineyard_client) < before
    with pytest.raises(VineyardObjectLostError):
        pull(db_value)


def test_container_with_bad_key_fails_at_push(vineyardd):
    with pytest.raises(UnsupportedXComValueError, match="str keys"):
        push({1: np.zeros(2)}, key="badkey")


def test_arrow_types_vineyard_builders_lost_round_trip(vineyard_client):
    # Vineyard's own Table builder could not read back nested timestamps nor store decimals
    # (v0.24.2); an IPC stream keeps every Arrow type.
    import decimal

    table = pa.table(
        {
            "l": pa.array([[1, 2], None], pa.list_(pa.timestamp("s", tz="Europe/Paris"))),
            "d": pa.array([decimal.Decimal("1.5"), None], pa.decimal128(5, 2)),
            "s": pa.array(["a", None], pa.string()),
        }
    )
    got = pull(push(table, key="types"))
    assert got.equals(table) and got.schema == table.schema


def test_value_read_back_differently_fails_at_push(vineyard_client, monkeypatch):
    from fluid_airflow.vineyard.client import arrow_stream

    real = arrow_stream.read_table
    monkeypatch.setattr(arrow_stream, "read_table", lambda client, oid: real(client, oid).slice(1))
    before = used(vineyard_client)
    with pytest.raises(VineyardReadBackError, match="Nothing was recorded"):
        push(pa.table({"a": [1, 2, 3]}), key="unreadable")
    assert used(vineyard_client) == before


def test_value_vineyard_cannot_store_fails_at_push(vineyard_client, monkeypatch):
    from fluid_airflow.vineyard.client import arrow_stream

    def refuse(client, table, size=None):
        client.create_blob(64)  # allocated before failing: must be rolled back
        raise pa.ArrowNotImplementedError("unsupported type")

    monkeypatch.setattr(arrow_stream, "put_table", refuse)
    before = used(vineyard_client)
    with pytest.raises(UnsupportedXComValueError, match=r"cannot store this pyarrow\.Table"):
        push(pa.table({"d": [1.5]}), key="refused")
    assert used(vineyard_client) == before


def test_nan_outside_arrays_fails_at_push_and_rolls_back_stored_leaves(vineyard_client):
    before = used(vineyard_client)
    with pytest.raises(UnsupportedXComValueError, match="NaN"):
        push({"arr": np.zeros(100_000), "score": float("nan")}, key="with_nan")
    assert used(vineyard_client) == before
    with pytest.raises(UnsupportedXComValueError, match="NaN"):
        push({"score": float("inf")}, key="inline_nan")


def test_pushed_reference_is_kept_as_is(vineyardd):
    db_value = push(np.arange(3.0), key="from_pod")
    assert push(db_value, key="again") == db_value


@pytest.mark.integration  # a fresh interpreter
def test_importing_backend_does_not_import_or_connect_vineyard():
    code = (
        "import sys; import fluid_airflow.vineyard.xcom, fluid_airflow.hooks.vineyard; "
        "print('vineyard' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_purge_of_a_row_holding_another_dags_reference_deletes_nothing(vineyard_client, caplog):
    theirs = push(np.ones(50_000), key="return_value", dag_id="dag_b", task_id="produce")
    ours = push(np.zeros(10), key="return_value", dag_id="dag_a", task_id="produce")
    # DAG A's row edited (REST PATCH) to hold DAG B's reference, then A's task is cleared.
    edited = own_row(ours)
    edited.value = theirs
    Backend.purge(edited)
    assert pull(theirs).sum() == 50_000  # B's object is untouched
    assert "belongs to another XCom" in caplog.text and theirs["name"] in caplog.text
    # A reference with A's own name but B's object id: the id is not what the name points at.
    forged = {**ours, "object_id": theirs["object_id"]}
    Backend.purge(own_row(forged))
    assert pull(theirs).sum() == 50_000
    assert pull(ours).sum() == 0  # and A's own object stays too: the reference was not its
    Backend.purge(own_row(ours))  # the row as Airflow wrote it: A's object goes
    with pytest.raises(VineyardObjectLostError):
        pull(ours)
    Backend.purge(own_row(theirs))


def test_a_plain_vineyard_client_gets_a_stored_table(vineyard_client):
    import vineyard

    from fluid_airflow.vineyard.client.arrow_stream import register_resolver

    table = pa.table({"a": [1, 2], "s": ["x", None]})
    db_value = push(table, key="plain_client")
    register_resolver()
    got = vineyard_client.get(vineyard.ObjectID(db_value["object_id"]))
    assert isinstance(got, pa.Table) and got.equals(table)
