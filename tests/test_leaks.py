"""No unnamed leftovers: a put that is refused, times out, or whose process is killed or stopped
leaves nothing once ``fluid-airflow gc`` runs; concurrent producers each store or are refused.

Every test has its own vineyardd and ends with 0 bytes and 0 objects in it, named or not
(``list_metadatas`` lists every sealed blob and object; ``memory_usage`` also counts unsealed
blobs, which no listing shows).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import BIN, REPO, XComRow, held_in

from fluid_airflow.hooks.vineyard import VineyardHook, close_clients
from fluid_airflow.vineyard.data.reference import VineyardReference
from fluid_airflow.vineyard.lifecycle import inventory
from fluid_airflow.vineyard.local.daemon import LocalVineyardd
from fluid_airflow.vineyard.xcom import VineyardXComBackend as Backend

MiB = 2**20


@pytest.fixture
def store(runtime, monkeypatch):
    """A 1 GiB vineyardd of this test only, used by the backend here and in the workers."""
    daemon = LocalVineyardd(runtime)
    daemon.start("1Gi")
    monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_SOCKET", str(daemon.socket_path))
    monkeypatch.setenv("AIRFLOW__FLUID__VINEYARD_TIMEOUT", "2")
    try:
        yield daemon
    finally:
        pid = daemon.pid()
        if pid:
            os.kill(pid, signal.SIGCONT)  # a test may leave it stopped
        close_clients(str(daemon.socket_path))


def client_of(daemon):
    return VineyardHook(ipc_socket=str(daemon.socket_path), timeout=5).get_conn()


held = held_in


def worker(task_id: str, columns: int, mib: int, go=None, pause: float = 0) -> subprocess.Popen[str]:
    """A producer process (tests/put_worker.py); ``pause``: seconds it stops after allocating."""
    argv = [sys.executable, str(REPO / "tests" / "put_worker.py"), task_id, str(columns), str(mib)]
    env = {**os.environ, "PAUSE_MID_PUT": str(pause)}
    proc = subprocess.Popen([*argv, *([str(go)] if go else [])], stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # log lines may come first
        if line.startswith("OUTCOME "):
            assert json.loads(line.split(" ", 1)[1]) == {"ready": True}
            return proc
    raise AssertionError(f"worker {task_id} exited before it was ready")


def outcome(proc: subprocess.Popen[str]) -> dict:
    out, _ = proc.communicate(timeout=120)
    lines = [line for line in out.splitlines() if line.startswith("OUTCOME ")]
    assert lines, f"worker printed no outcome:\n{out[-2000:]}"
    return json.loads(lines[-1].split(" ", 1)[1])


def gc(env_socket: str) -> dict:
    done = subprocess.run(
        [str(BIN / "fluid-airflow"), "gc", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AIRFLOW__FLUID__VINEYARD_SOCKET": env_socket},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_for_bytes(daemon, low: int, high: int, timeout: float = 60.0) -> int:
    """Poll vineyardd until it holds between ``low`` and ``high`` bytes (a put half-way)."""
    client = client_of(daemon)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        used = int(client.status.memory_usage)
        if low <= used <= high:
            return used
        time.sleep(0.001)
    raise AssertionError(f"vineyardd never held between {low} and {high} bytes")


def release(ref: dict) -> None:
    Backend.purge(XComRow(ref, key="return_value", dag_id="fa_leaks", run_id="manual__leaks",
                          task_id=ref["task_id"]))  # fmt: skip


def test_concurrent_producers_needing_twice_the_store_each_store_or_are_refused(store, tmp_path):
    go = tmp_path / "go"
    # 4 x 520 MiB = 2.03x the 1 GiB store; at most one fits.
    procs = [worker(f"p{i}", 8, 65, go) for i in range(4)]
    go.touch()
    results = [outcome(p) for p in procs]
    stored = [r["stored"] for r in results if "stored" in r]
    refused = [r for r in results if "error" in r]
    assert stored and len(stored) + len(refused) == 4
    assert all(r["error"] == "VineyardOutOfMemoryError" for r in refused), refused
    # Refused puts left nothing: all that is held is the stored values.
    used, _, names = held(store)
    assert used == sum(VineyardReference.from_json(r).bytes for r in stored) and names == len(stored)
    for ref in stored:
        release(ref)
    assert held(store) == (0, 0, 0)


def test_a_producer_killed_mid_put_leaves_nothing_after_gc(store):
    proc = worker("killed", 16, 48, pause=30)  # 768 MiB in one blob, allocated, not written
    wait_for_bytes(store, 768 * MiB, 800 * MiB)
    proc.kill()
    proc.wait()
    assert held(store)[0] > 0 and held(store)[2] == 0  # held bytes no name reaches
    # The page's totals see them (what the handoffs API returns for the instance).
    (row,) = inventory.instances(client_of(store))
    assert row["unnamed_bytes"] == held(store)[0] > 0 and row["puts_in_flight"] == 0
    report = gc(str(store.socket_path))
    assert report["unnamed"]["objects"] > 0 and report["unnamed"]["journals"] == 1
    assert held(store) == (0, 0, 0)
    assert inventory.instances(client_of(store))[0]["unnamed_bytes"] == 0
    # The store is whole again: the same value now fits.
    again = outcome(worker("again", 16, 48))
    release(again["stored"])
    assert held(store) == (0, 0, 0)


def test_vineyardd_stopped_mid_put_times_out_and_gc_frees_the_rest(store):
    proc = worker("stopped", 16, 48, pause=1)
    wait_for_bytes(store, 768 * MiB, 800 * MiB)
    pid = store.pid()
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    result = outcome(proc)
    assert result["error"] == "VineyardTimeoutError", result
    assert time.monotonic() - started < 30  # per-call bound of 2 s, plus reconnect attempts
    os.kill(pid, signal.SIGCONT)
    assert held(store)[0] > 0
    gc(str(store.socket_path))
    assert held(store) == (0, 0, 0)


def test_gc_never_touches_a_put_in_flight(store):
    proc = worker("slow", 16, 48, pause=1)
    wait_for_bytes(store, 768 * MiB, 800 * MiB)
    psutil.Process(proc.pid).suspend()  # the producer stops half-way, its journal alive
    try:
        before = held(store)
        report = gc(str(store.socket_path))
        assert report["unnamed"]["in_flight"] == 1 and report["unnamed"]["objects"] == 0
        assert held(store) == before
    finally:
        psutil.Process(proc.pid).resume()
    result = outcome(proc)
    ref = VineyardReference.from_json(result["stored"])
    frame = Backend.deserialize_value(XComRow(result["stored"]))
    assert frame.shape == (48 * MiB // 8, 16) and float(frame["c15"].iloc[-1]) == 15.0
    del frame
    assert ref.bytes >= 768 * MiB
    release(result["stored"])
    assert held(store) == (0, 0, 0)


DIES_INSIDE_CREATE_BLOB = """
import os, signal, sys
import numpy as np
from fluid_airflow.vineyard.lifecycle import inflight  # first: it lets vineyard import (pkg_resources)
import vineyard
client = vineyard.connect(sys.argv[1])
real = client.create_blob
def create_then_die(size):
    real(size)  # vineyardd allocated the blob; its id never reaches the journal
    os.kill(os.getpid(), signal.SIGKILL)
client.create_blob = create_then_die
with inflight.tracked(client, 64 * 2**20, "airflow/fa_leaks/manual__leaks/t/-1/return_value"):
    client.put(np.ones(8 * 2**20))
"""


def test_a_blob_whose_id_never_came_back_is_freed_by_gc(store):
    done = subprocess.run([sys.executable, "-c", DIES_INSIDE_CREATE_BLOB, str(store.socket_path)])
    assert done.returncode == -signal.SIGKILL
    used, listed, names = held(store)
    assert used == 64 * MiB and listed == 0 and names == 0  # an unsealed blob no listing shows
    report = gc(str(store.socket_path))
    assert report["unnamed"]["journals"] == 1
    assert held(store) == (0, 0, 0)
