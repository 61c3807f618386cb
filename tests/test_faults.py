"""Faults of vineyardd and its metadata store: each is a named error within a time bound.

Every test runs its own vineyardd (and etcd) in a fresh runtime dir, with
``[fluid] vineyard_timeout`` = 2 s, and ends by checking that the daemon holds 0 objects and
0 bytes once the runs are over (released at run end, by the fix, or by ``fluid-airflow gc``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
from conftest import BIN, own_row, task_states

from fluid_airflow.exceptions import VineyardConnectionError, VineyardObjectLostError, VineyardTimeoutError
from fluid_airflow.hooks.vineyard import VineyardHook, close_clients
from fluid_airflow.vineyard.local.daemon import LocalVineyardd
from fluid_airflow.vineyard.local.etcd import LocalEtcd
from fluid_airflow.vineyard.xcom import VineyardXComBackend as Backend

TIMEOUT = 2.0
SCOPE = {"key": "return_value", "task_id": "t", "dag_id": "fa_faults", "run_id": "manual__faults"}


def assert_empty(daemon: LocalVineyardd) -> None:
    """0 bytes and 0 names in the daemon, asked through a fresh client."""
    client = VineyardHook(ipc_socket=str(daemon.socket_path), timeout=5).get_conn()
    assert client.list_names("*", limit=100) == {}
    assert client.status.memory_usage == 0


@pytest.fixture
def store(runtime, monkeypatch):
    """A 256 MiB vineyardd of this test only; the XCom backend uses it with a 2 s call timeout."""
    daemon = LocalVineyardd(runtime)
    daemon.start("256Mi")
    monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_SOCKET", str(daemon.socket_path))
    monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_TIMEOUT", str(TIMEOUT))
    try:
        yield daemon
    finally:
        pid = daemon.pid()
        if pid:  # a test may leave it stopped (SIGSTOP)
            os.kill(pid, signal.SIGCONT)
        close_clients(str(daemon.socket_path))  # vineyardd ignores SIGTERM while we are connected


def _freeze(daemon: LocalVineyardd) -> int:
    pid = daemon.pid()
    os.kill(pid, signal.SIGSTOP)
    return pid


def test_hung_vineyardd_fails_connect_within_the_timeout(store):
    pid = _freeze(store)
    try:
        started = time.monotonic()
        with pytest.raises(VineyardTimeoutError, match=r"did not answer its handshake within 2 s") as err:
            VineyardHook(ipc_socket=str(store.socket_path)).get_conn()
        assert time.monotonic() - started < TIMEOUT + 1
        assert "fluid-airflow vineyard status" in str(err.value)
        # ... and that command answers too (its own 5 s handshake bound), naming the live pid.
        status = subprocess.run(
            [str(BIN / "fluid-airflow"), "vineyard", "status", "--runtime-dir", str(store.runtime_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode != 0 and f"pid {pid} is alive but does not answer" in status.stdout
    finally:
        os.kill(pid, signal.SIGCONT)
    assert VineyardHook(ipc_socket=str(store.socket_path)).get_conn().status.instance_id == 0


def test_hung_vineyardd_fails_a_call_on_a_connected_client_within_the_timeout(store):
    """The @task.fluid runner's path: a client is handed in, so the hang hits the call itself."""
    from fluid_airflow.vineyard.xcom import use_client

    client = VineyardHook(ipc_socket=str(store.socket_path)).get_conn()
    ref = Backend.serialize_value(np.arange(1000.0), **SCOPE)
    pid = _freeze(store)
    try:
        started = time.monotonic()
        with use_client(client), pytest.raises(VineyardTimeoutError) as err:
            Backend.deserialize_value(_Row(ref))
        assert time.monotonic() - started < TIMEOUT + 1
        assert "did not answer within 2 s while reading XCom 'return_value'" in str(err.value)
    finally:
        os.kill(pid, signal.SIGCONT)
    # The timed-out client is dead; the hook replaces it and the value is intact.
    assert Backend.deserialize_value(_Row(ref)).sum() == sum(range(1000))
    Backend.purge(own_row(ref))
    assert_empty(store)


def test_hung_vineyardd_between_producer_and_consumer(dagbag, store, runtime, monkeypatch, capfd, caplog):
    """Real Airflow: the consumer fails with the timeout error in bounded time; the run-end release
    cannot reach the frozen daemon, and `fluid-airflow gc` reclaims the objects once it is back."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "0")
    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FAILED_FOR", "0")  # this run fails: release it too
    dag = dagbag.get_dag("fa_hang")
    dr = dag.test(run_conf={"runtime_dir": str(runtime)})
    assert task_states(dr) == {
        ("produce", -1): "success",
        ("freeze_vineyardd", -1): "success",
        ("consume", -1): "failed",
    }
    with create_session() as session:
        ti = (
            session.query(TaskInstance).filter_by(dag_id="fa_hang", run_id=dr.run_id, task_id="consume").one()
        )
        duration = (ti.end_date - ti.start_date).total_seconds()
    assert duration < 2 * TIMEOUT + 2  # a stale-client check, then the handshake: two waits at most
    logged = capfd.readouterr().out
    assert "VineyardTimeoutError" in logged and "did not answer" in logged
    assert "Could not release the Vineyard objects of DAG run fa_hang/" in caplog.text  # bounded, logged
    os.kill(store.pid(), signal.SIGCONT)
    gc = subprocess.run(
        [str(BIN / "fluid-airflow"), "gc", "--dag-id", "fa_hang", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gc.returncode == 0, gc.stderr
    reclaimed = json.loads(gc.stdout)["objects"]
    assert [(o["task_id"], o["bytes"]) for o in reclaimed] == [("produce", 800_000)]
    assert_empty(store)


def test_connection_broken_mid_transfer_is_named_and_the_retry_succeeds(store):
    """vineyardd dies while a DataFrame is being written (its blob allocated, not yet sealed)."""
    client = VineyardHook(ipc_socket=str(store.socket_path)).get_conn()
    frame = pd.DataFrame({f"c{i}": np.arange(100_000.0) for i in range(8)})
    create_blob, calls = client.create_blob, []

    def dies_after_the_first_blob(size):
        calls.append(size)
        builder = create_blob(size)
        pid = store.pid()
        os.kill(pid, signal.SIGKILL)
        while store.pid() == pid:  # until it is really gone
            time.sleep(0.01)
        return builder

    client.create_blob = dies_after_the_first_blob
    started = time.monotonic()
    with pytest.raises(VineyardConnectionError, match="broke while storing XCom 'return_value'") as err:
        Backend.serialize_value(frame, **SCOPE)
    assert time.monotonic() - started < 5
    assert not isinstance(err.value, VineyardTimeoutError) and "died or restarted" in str(err.value)
    # What the task's retry does once vineyardd is back: store again, and read it intact.
    store.start("256Mi")
    ref = Backend.serialize_value(frame, **SCOPE)
    pd.testing.assert_frame_equal(Backend.deserialize_value(_Row(ref)), frame)
    Backend.purge(own_row(ref))
    assert_empty(store)


@contextlib.contextmanager
def _as_other_user():
    """Root passes every permission check: act as nobody meanwhile (not root: no change)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.mark.parametrize("closed", ["socket", "folder"])
def test_socket_not_permitted_is_named_at_once(store, closed):
    path = store.socket_path if closed == "socket" else store.socket_path.parent
    mode = path.stat().st_mode
    os.chmod(path, 0o755 if closed == "socket" else 0)
    if closed == "socket":
        os.chmod(store.socket_path, 0)
    try:
        started = time.monotonic()
        with _as_other_user(), pytest.raises(VineyardConnectionError, match="Not permitted") as err:
            VineyardHook(ipc_socket=str(store.socket_path)).get_conn()
        assert time.monotonic() - started < 1
        assert str(store.socket_path) in str(err.value) and "Run the task as a user" in str(err.value)
    finally:
        os.chmod(path, mode)
    assert_empty(store)


def test_etcd_unreachable_is_a_bounded_named_error_and_nothing_stays_behind(runtime, monkeypatch):
    etcd = LocalEtcd(runtime / "etcd")
    etcd.start()
    daemon = LocalVineyardd(runtime)
    try:
        daemon.start("256Mi", etcd_endpoint=etcd.endpoint)
        monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_SOCKET", str(daemon.socket_path))
        monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_TIMEOUT", str(TIMEOUT))
        before = Backend.serialize_value(np.arange(1000.0), **SCOPE)
        etcd.stop()
        started = time.monotonic()
        with pytest.raises(VineyardTimeoutError, match="metadata store \\(etcd\\)") as err:
            Backend.serialize_value(np.arange(1_000_000.0), **{**SCOPE, "task_id": "u"})
        assert time.monotonic() - started < 2 * TIMEOUT + 2  # the persist's wait, then the roll-back's
        assert "restart vineyardd once etcd is back" in str(err.value)
        # The 8 MB written before the persist hung were deleted: only the earlier value remains.
        client = VineyardHook(ipc_socket=str(daemon.socket_path)).get_conn()
        assert client.status.memory_usage == 8000  # the earlier array's payload
        assert Backend.deserialize_value(_Row(before)).sum() == sum(range(1000))  # local reads still work
        # Deleting a persisted object needs etcd: a named error at once, not a hang.
        from fluid_airflow.vineyard.data.reference import VineyardReference
        from fluid_airflow.vineyard.xcom import release

        started = time.monotonic()
        with pytest.raises(VineyardConnectionError, match="cannot reach its metadata store \\(etcd\\)"):
            release(VineyardReference.from_json(before))
        assert time.monotonic() - started < TIMEOUT + 1
        # Recovery: etcd back, vineyardd restarted. Its metadata survived in etcd but the payload
        # did not: reading is the lost-object error, and releasing clears the dangling entry.
        etcd.start()
        close_clients(str(daemon.socket_path))
        daemon.stop(timeout=5)
        daemon.start("256Mi", etcd_endpoint=etcd.endpoint)
        with pytest.raises(VineyardObjectLostError, match="which is gone"):
            Backend.deserialize_value(_Row(before))
        release(VineyardReference.from_json(before))
        assert_empty(daemon)
    finally:
        close_clients(str(daemon.socket_path))
        daemon.stop(timeout=5)
        etcd.stop()


class _Row:
    """What Airflow hands deserialize_value / purge: an object with ``.value``."""

    def __init__(self, value):
        self.value = value
