"""Memory admission before a Vineyard put, against a small dedicated vineyardd (64Mi)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fluid_airflow.exceptions import FluidAirflowError, UnsupportedXComValueError, VineyardOutOfMemoryError
from fluid_airflow.vineyard.data import codec
from fluid_airflow.vineyard.data.reference import VineyardReference
from fluid_airflow.vineyard.lifecycle import admission
from fluid_airflow.vineyard.lifecycle.release import release_run
from fluid_airflow.vineyard.xcom import VineyardXComBackend as Backend

MiB = 1 << 20
DAG = "adm"
RUN_A = "manual__2026-11-29T01:00:00+00:00"
RUN_B = "manual__2026-11-29T02:00:00+00:00"
RUN_NEW = "manual__2026-11-29T03:00:00+00:00"


@pytest.fixture
def store(runtime, monkeypatch):
    """A 64Mi vineyardd of its own; the backend points at it. Yields this process's client."""
    from fluid_airflow.hooks.vineyard import reset_clients
    from fluid_airflow.vineyard.local.daemon import LocalVineyardd
    from fluid_airflow.vineyard.xcom import backend_hook

    daemon = LocalVineyardd(runtime)
    daemon.start("64Mi")
    monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_SOCKET", str(daemon.socket_path))
    reset_clients()
    client = backend_hook().get_conn()
    assert str(client.ipc_socket) == str(daemon.socket_path)
    assert int(client.status.memory_limit) == 64 * MiB
    try:
        yield client
    finally:
        client.close()  # vineyardd ignores SIGTERM while a client is connected
        reset_clients()


def push(value, *, run_id=RUN_NEW, key="return_value", task_id="t", dag_id=DAG):
    return Backend.serialize_value(
        value, key=key, task_id=task_id, dag_id=dag_id, run_id=run_id, map_index=-1
    )


def used(client) -> int:
    return int(client.status.memory_usage)


def free(client) -> int:
    status = client.status
    return int(status.memory_limit) - int(status.memory_usage)


def mib_array(n_mib: float) -> np.ndarray:
    return np.ones(int(n_mib * MiB), dtype=np.uint8)


def fill_two_runs(client) -> None:
    """Run A: three 8 MiB objects (24 MiB); run B: one 20 MiB object. 20 MiB stay free."""
    for i in range(3):
        push(mib_array(8), run_id=RUN_A, task_id=f"a{i}")
    push(mib_array(20), run_id=RUN_B, task_id="b")
    assert free(client) == 20 * MiB


def test_value_larger_than_the_store_fails_before_any_allocation(store):
    # 16 columns of 5 MiB = 80 MiB (the RangeIndex is Arrow metadata, not stored): vineyardd would
    # take it column by column, fill the store and leave the columns it wrote behind (measured), so
    # refusing up front matters.
    rows = 5 * MiB // 8
    df = pd.DataFrame({f"c{i}": np.zeros(rows) for i in range(16)})
    needed = admission.payload_nbytes(codec.encode(df).payload)
    assert 16 * 5 * MiB < needed < 16 * 5 * MiB + 8192  # the IPC stream: buffers + schema
    push(mib_array(1), task_id="small")
    before = used(store)

    started = time.perf_counter()
    with pytest.raises(VineyardOutOfMemoryError) as info:
        push(df, task_id="huge")
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0, elapsed
    assert info.value.__cause__ is None  # refused by the check, not by vineyardd
    assert used(store) == before  # nothing allocated, nothing leaked
    assert not any("huge" in n for n in store.list_names("*", limit=1000))
    message = str(info.value)
    assert f"({needed} bytes)" in message
    assert f"({64 * MiB - before} bytes) are free" in message
    assert f"({64 * MiB} bytes) limit" in message
    assert "'return_value' of task 'huge'" in message and RUN_NEW in message and DAG in message
    assert "larger than the whole store" in message and "--size" in message
    assert (info.value.needed, info.value.free, info.value.limit) == (needed, 64 * MiB - before, 64 * MiB)


def test_exception_type_is_a_fluid_error_not_a_type_error(store):
    with pytest.raises(VineyardOutOfMemoryError) as info:
        push(mib_array(65))
    assert isinstance(info.value, FluidAirflowError)
    assert not isinstance(info.value, UnsupportedXComValueError)  # the value is fine, the store is full
    assert type(info.value).__module__ == "fluid_airflow.exceptions"


def test_holders_name_the_bigger_run_first(store):
    fill_two_runs(store)
    before = used(store)
    with pytest.raises(VineyardOutOfMemoryError) as info:
        push(mib_array(24), task_id="next")
    assert used(store) == before

    # Run A holds more in total although run B holds the biggest single object.
    assert info.value.holders[:2] == [(DAG, RUN_A, 24 * MiB, 3), (DAG, RUN_B, 20 * MiB, 1)]
    message = str(info.value)
    assert "Largest holders by DAG run" in message
    assert message.index(RUN_A) < message.index(RUN_B) < message.index("Fix:")
    assert "24.00 MiB in 3 object(s)" in message and "20.00 MiB in 1 object(s)" in message
    assert f"({24 * MiB} bytes)" in message and f"({20 * MiB} bytes) are free" in message
    assert "fluid-airflow gc" in message and "--size" in message
    assert "whole store" not in message  # releasing runs does help here


def test_after_releasing_a_run_the_same_put_succeeds(store):
    fill_two_runs(store)
    value = mib_array(24)
    with pytest.raises(VineyardOutOfMemoryError):
        push(value, task_id="next")

    report = release_run(store, DAG, RUN_A)
    assert report.objects == 3 and free(store) == 44 * MiB

    ref = VineyardReference.from_json(push(value, task_id="next"))
    assert ref.bytes == 24 * MiB and ref.run_id == RUN_NEW
    assert [h[:2] for h in admission.holders(store, "airflow")] == [(DAG, RUN_NEW), (DAG, RUN_B)]


def test_a_value_that_fits_with_the_margin_is_admitted(store):
    push(mib_array(40), run_id=RUN_A)
    room = free(store)
    # The largest size the check admits: size + margin(size) == free bytes.
    size = int((room - admission.MARGIN_BYTES) / (1 + admission.MARGIN_FRACTION))
    while admission.required_bytes(size + 1) <= room:
        size += 1
    ref = VineyardReference.from_json(push(np.ones(size, dtype=np.uint8), task_id="fits"))
    assert ref.bytes == size
    with pytest.raises(VineyardOutOfMemoryError) as info:
        push(np.ones(free(store) + 1, dtype=np.uint8), task_id="one_byte_too_many")
    assert info.value.__cause__ is None and "Nothing was stored." in str(info.value)  # refused by the check


def test_refusal_by_the_put_itself_maps_to_the_same_error(store, monkeypatch):
    """The estimate can be low (or a concurrent put took the room): vineyardd's own refusal
    becomes the same exception, with the holders."""
    fill_two_runs(store)
    monkeypatch.setattr(admission, "payload_nbytes", lambda payload: 1)
    before = used(store)
    with pytest.raises(VineyardOutOfMemoryError) as info:
        push(mib_array(24), task_id="underestimated")
    assert used(store) == before  # one blob, refused whole
    message = str(info.value)
    assert "refused the put (NotEnoughMemoryException" in message
    assert type(info.value.__cause__).__name__ == "NotEnoughMemoryException"
    assert info.value.holders[0] == (DAG, RUN_A, 24 * MiB, 3)
    assert message.index(RUN_A) < message.index(RUN_B)


def test_holders_count_only_live_backend_objects_once(store):
    push(mib_array(2), run_id=RUN_A, task_id="x")
    push(mib_array(3), run_id=RUN_B, task_id="y", dag_id="other/dag")
    other = store.put(mib_array(4), persist=True)
    store.put_name(other, "someone-else/not/an/xcom/-1/name")
    alias = store.get_name(f"airflow/{DAG}/{RUN_A}/x/-1/return_value")
    store.put_name(alias, f"airflow/{DAG}/{RUN_A}/x/-1/alias")  # a second name, same object
    dead = store.put(mib_array(1), persist=True)
    store.put_name(dead, f"airflow/{DAG}/{RUN_A}/gone/-1/return_value")
    store.delete(dead)  # delete keeps the name (docs/design.md §2)

    assert admission.holders(store, "airflow") == [
        ("other/dag", RUN_B, 3 * MiB, 1),
        (DAG, RUN_A, 2 * MiB, 1),
    ]
    with pytest.raises(VineyardOutOfMemoryError) as info:
        push(mib_array(60), task_id="big")
    assert "4.00 MiB are held by objects without an XCom name" in str(info.value)


ROWS = 200_000
ESTIMATED = {
    "df_numeric_range_index": pd.DataFrame({"a": np.arange(ROWS, dtype=float), "b": np.arange(ROWS)}),
    "df_strings_with_nulls": pd.DataFrame(
        {
            "s": [None if i % 7 == 0 else f"value-{i}" for i in range(ROWS)],
            "u": ["héllo wörld ✓"] * ROWS,
            "t": pd.date_range("2020-01-01", periods=ROWS, freq="s", tz="UTC"),
        }
    ),
    "df_string_index": pd.DataFrame(
        {"v": np.arange(ROWS, dtype=float)}, index=[f"r{i}" for i in range(ROWS)]
    ),
    "df_categorical_via_arrow": pd.DataFrame(
        {"c": pd.Categorical(["a", "b"] * (ROWS // 2)), "v": np.arange(ROWS)}
    ),
    "series": pd.Series(np.arange(ROWS, dtype=np.int32), name="x"),
    "arrow_table_strings": pa.table({"s": [f"v{i}" for i in range(ROWS)], "l": [[1, 2]] * ROWS}),
    "str_ndarray": np.array(["abc", "de"] * (ROWS // 2)),
}


@pytest.mark.parametrize("name", list(ESTIMATED))
def test_estimate_is_close_to_what_vineyard_allocates(store, name):
    value = ESTIMATED[name]
    estimate = admission.payload_nbytes(codec.encode(value).payload)
    before = used(store)
    ref = VineyardReference.from_json(push(value, task_id=name))
    allocated = used(store) - before
    assert allocated == ref.bytes  # ObjectMeta.memory_usage is what vineyardd accounts
    assert 0.95 <= estimate / allocated <= 1.05, (estimate, allocated)
    if isinstance(value, (pd.DataFrame, pd.Series)):
        # pandas values are sized from their Arrow buffers, never by walking the cells.
        assert isinstance(codec.encode(value).payload, pa.Table)
