"""LocalVineyardd and its resource probes, against the real vineyardd of the vineyard-bdist wheel.

Every daemon runs in its own short temporary runtime dir and is stopped by pid; the ``runtime``
fixture fails the test if any process naming that dir is still alive afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import gone, processes_naming

from fluid_airflow.exceptions import (
    InsufficientMemoryError,
    InvalidSizeError,
    SocketInUseError,
    VineyardDaemonError,
)
from fluid_airflow.vineyard.local.daemon import LocalVineyardd
from fluid_airflow.vineyard.local.resources import (
    MAX_SOCKET_PATH_BYTES,
    MemoryLimit,
    cgroup_limits,
    check_memory,
    find_vineyardd,
    parse_size,
    query_instance,
    socket_answers,
)

MiB = 1 << 20
GiB = 1 << 30


def spawned_nothing(runtime: Path) -> bool:
    """No process naming the runtime dir and no log/pid/state file: nothing was started."""
    files = {p.name for p in runtime.iterdir()} - {"vineyardd.lock"}
    return not processes_naming(str(runtime)) and not files


# -- lifecycle ---------------------------------------------------------------------------------


def test_start_status_put_get_stop(runtime):
    import vineyard

    daemon = LocalVineyardd(runtime)
    status = daemon.start("64Mi", timeout=30)
    sock = runtime / "vineyard.sock"

    assert status.running and status.pid and status.socket == str(sock)
    assert status.memory_limit == status.size_bytes == 64 * MiB
    assert status.instance_id == 0 and status.size == "64Mi"
    assert int((runtime / "vineyardd.pid").read_text()) == status.pid
    state = json.loads((runtime / "vineyardd.json").read_text())
    assert state["pid"] == status.pid and state["size_bytes"] == 64 * MiB and state["socket"] == str(sock)
    assert "--norpc" in state["argv"] and state["argv"][5:7] == ["--meta", "local"]
    assert str(sock) in psutil.Process(status.pid).cmdline()

    client = vineyard.connect(str(sock))
    try:
        array = np.arange(1000, dtype="float64")
        oid = client.put(array)
        np.testing.assert_array_equal(client.get(oid), array)
        assert daemon.status().memory_usage >= array.nbytes
    finally:
        client.close()

    assert daemon.stop() is True
    assert gone(status.pid)
    assert not sock.exists()
    assert not (runtime / "vineyardd.pid").exists() and not (runtime / "vineyardd.json").exists()
    after = daemon.status()
    assert not after.running and after.pid is None and after.memory_limit is None


def test_second_start_on_same_socket_is_refused_naming_pid(runtime, tmp_path_factory):
    first = LocalVineyardd(runtime).start("16Mi")

    with pytest.raises(SocketInUseError, match=rf"pid {first.pid}\b"):
        LocalVineyardd(runtime).start("16Mi")
    # Another runtime dir pointing at the same socket: found by scanning processes, not the pid file.
    other = Path(tempfile.mkdtemp(prefix="fa-", dir="/tmp"))
    try:
        with pytest.raises(SocketInUseError, match=rf"pid {first.pid}\b"):
            LocalVineyardd(other, socket=first.socket).start("16Mi")
    finally:
        shutil.rmtree(other)
    # The first daemon was not disturbed.
    assert query_instance(first.socket)["memory_limit"] == 16 * MiB
    assert LocalVineyardd(runtime).status().pid == first.pid


def test_stale_socket_of_killed_daemon_is_removed_and_start_succeeds(runtime, caplog):
    daemon = LocalVineyardd(runtime)
    first = daemon.start("16Mi")
    os.kill(first.pid, signal.SIGKILL)  # SIGKILL leaves the socket file behind (docs/design.md §7)
    assert gone(first.pid)
    assert (runtime / "vineyard.sock").exists()
    assert not daemon.status().running

    caplog.set_level("WARNING", logger="fluid_airflow")
    second = daemon.start("16Mi")
    assert second.running and second.pid != first.pid
    assert any("stale vineyardd socket" in r.getMessage() for r in caplog.records)


def test_stop_never_signals_a_process_that_is_not_our_vineyardd(runtime):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        (runtime / "vineyardd.pid").write_text(f"{bystander.pid}\n")  # e.g. a recycled pid
        assert LocalVineyardd(runtime).stop() is False
        assert bystander.poll() is None
        assert not (runtime / "vineyardd.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_when_nothing_runs_returns_false(runtime):
    assert LocalVineyardd(runtime).stop() is False
    status = LocalVineyardd(runtime).status()
    assert not status.running and status.pid is None


# -- refusals before spawning ------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", ["", " ", "0", "-1", "-512Mi", "2GB", "lots", "1 G", "1e9", "1.5", "Gi", "1Gib", "1K", "4095"]
)
def test_invalid_size_is_refused_without_spawning(runtime, size):
    with pytest.raises(InvalidSizeError, match="vineyardd size"):
        LocalVineyardd(runtime).start(size)
    assert spawned_nothing(runtime)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024000", 1024000),
        ("4096", 4096),
        ("1024M", GiB),
        ("1G", GiB),  # vineyardd: every suffix is binary
        ("1Gi", GiB),
        ("1g", GiB),
        ("512Mi", 512 * MiB),
        ("2Gi", 2 * GiB),
        ("1.5Gi", 3 * GiB // 2),
        ("0.5G", GiB // 2),
        ("64k", 64 * 1024),
        (" 2Gi ", 2 * GiB),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["1.5Gi", "1G", "1024M", "100.3Mi"])
def test_parse_size_agrees_with_vineyardd(runtime, text):
    """vineyardd itself, given the raw string, reports the memory_limit parse_size computes."""
    sock = runtime / "v.sock"
    proc = subprocess.Popen(
        [str(find_vineyardd()), "--socket", str(sock), "--size", text, "--meta", "local", "--norpc"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "GLOG_logtostderr": "1"},
    )
    try:
        deadline = time.monotonic() + 10
        while not socket_answers(sock) and time.monotonic() < deadline:
            assert proc.poll() is None, "vineyardd exited"
            time.sleep(0.01)
        assert query_instance(sock)["memory_limit"] == parse_size(text)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # vineyardd may ignore SIGTERM while a client lingers
            proc.kill()
            proc.wait(10)


def test_more_memory_than_available_is_refused(runtime):
    available = psutil.virtual_memory().available
    size = str(available + GiB)
    with pytest.raises(InsufficientMemoryError) as info:
        LocalVineyardd(runtime).start(size)
    message = str(info.value)
    assert size in message and "available" in message and "psutil" in message
    assert spawned_nothing(runtime)


def test_too_long_socket_path_is_refused(runtime):
    sock = runtime / ("s" * (MAX_SOCKET_PATH_BYTES + 1 - len(str(runtime)) - 1))
    assert len(str(sock)) == MAX_SOCKET_PATH_BYTES + 1
    with pytest.raises(VineyardDaemonError, match="shorter runtime dir"):
        LocalVineyardd(runtime, socket=sock).start("16Mi")
    assert spawned_nothing(runtime)


def test_rpc_needs_explicit_opt_in(runtime):
    with pytest.raises(VineyardDaemonError, match=r"0\.0\.0\.0.*allow_public_rpc"):
        LocalVineyardd(runtime).start("16Mi", rpc_port=19600)
    with pytest.raises(VineyardDaemonError, match="not a TCP port"):
        LocalVineyardd(runtime).start("16Mi", rpc_port=70000, allow_public_rpc=True)
    assert spawned_nothing(runtime)


def test_non_socket_file_at_socket_path_is_refused(runtime):
    (runtime / "vineyard.sock").write_text("not a socket")
    with pytest.raises(VineyardDaemonError, match="not a socket"):
        LocalVineyardd(runtime).start("16Mi")
    assert (runtime / "vineyard.sock").read_text() == "not a socket"


def test_foreign_listener_on_socket_is_refused(runtime):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(runtime / "vineyard.sock"))
    server.listen()
    try:
        with pytest.raises(SocketInUseError, match="not started by fluid-airflow") as refused:
            LocalVineyardd(runtime).start("16Mi")
        # Not this runtime dir's daemon: stopping "--runtime-dir <this one>" would stop nothing.
        assert "stop it where it was started" in str(refused.value)
        assert "vineyard stop --runtime-dir" not in str(refused.value)
    finally:
        server.close()


# -- a daemon that fails -------------------------------------------------------------------------


def fake_binary(runtime: Path, body: str) -> Path:
    """A stand-in executable (not vineyardd) to exercise our handling of a failing daemon."""
    script = runtime / "fake-vineyardd"
    script.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return script


def test_early_exit_raises_with_log_tail(runtime):
    binary = fake_binary(runtime, "echo 'boom: cannot map memory' >&2\nexit 3\n")
    with pytest.raises(VineyardDaemonError, match=r"(?s)exited with code 3.*boom: cannot map memory"):
        LocalVineyardd(runtime, binary=binary).start("16Mi")
    assert not (runtime / "vineyardd.pid").exists() and not (runtime / "vineyardd.json").exists()


def test_timeout_kills_the_daemon(runtime):
    binary = fake_binary(runtime, "trap '' TERM\necho waiting\nwhile :; do sleep 0.05; done\n")
    with pytest.raises(VineyardDaemonError, match=r"(?s)did not answer.*within 0.5 s.*killed.*waiting"):
        LocalVineyardd(runtime, binary=binary).start("16Mi", timeout=0.5)
    assert not processes_naming(str(binary))
    assert not (runtime / "vineyardd.pid").exists()


@pytest.mark.integration  # a fresh interpreter
def test_find_vineyardd_does_not_import_vineyard():
    code = (
        "import sys; from fluid_airflow.vineyard.local.resources import find_vineyardd; "
        "p = find_vineyardd(); assert 'vineyard' not in sys.modules, 'imported'; print(p)"
    )
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW__CORE__XCOM_BACKEND"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    path = Path(run.stdout.strip())
    assert path.name == "vineyardd" and path.parent.name == "bdist" and os.access(path, os.X_OK)


# -- cgroup and memory probing with fake files -------------------------------------------------


def fake_tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(proc_cgroup)
    cgroup.mkdir()
    for name, text in files.items():
        path = cgroup / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc, cgroup


def test_cgroup_v2_limit_minus_working_set(tmp_path):
    proc, cgroup = fake_tree(
        tmp_path,
        "0::/kubepods/pod1/ctr\n",
        {
            "cgroup.controllers": "cpu memory\n",
            "kubepods/pod1/ctr/memory.max": f"{4 * GiB}\n",
            "kubepods/pod1/ctr/memory.current": f"{3 * GiB}\n",
            "kubepods/pod1/ctr/memory.stat": f"anon 100\ninactive_file {GiB}\nactive_file 5\n",
            "kubepods/pod1/memory.max": "max\n",
            "kubepods/pod1/memory.current": f"{3 * GiB}\n",
        },
    )
    (limit,) = cgroup_limits(proc, cgroup)
    assert limit.available_bytes == 2 * GiB  # 4 GiB - (3 GiB - 1 GiB reclaimable page cache)
    assert limit.limit_bytes == 4 * GiB and limit.used_bytes == 2 * GiB
    assert "cgroup v2" in limit.source and limit.source.endswith("ctr/memory.max")


def test_cgroup_v2_max_means_unlimited(tmp_path):
    proc, cgroup = fake_tree(
        tmp_path,
        "0::/\n",
        {"cgroup.controllers": "memory\n", "memory.max": "max\n", "memory.current": "12345\n"},
    )
    assert cgroup_limits(proc, cgroup) == []


def test_cgroup_v2_tighter_parent_and_missing_path_fallback(tmp_path):
    proc, cgroup = fake_tree(
        tmp_path,
        "0::/a/b\n",
        {
            "cgroup.controllers": "memory\n",
            "a/b/memory.max": f"{8 * GiB}\n",
            "a/b/memory.current": f"{GiB}\n",
            "a/memory.max": f"{2 * GiB}\n",
            "a/memory.current": f"{GiB}\n",
        },
    )
    limits = cgroup_limits(proc, cgroup)
    assert sorted(lim.available_bytes for lim in limits) == [GiB, 7 * GiB]
    # A host-side path that does not exist in this mount namespace falls back to the mount root.
    (proc / "self" / "cgroup").write_text("0::/docker/abc\n")
    (cgroup / "memory.max").write_text(f"{GiB}\n")
    (cgroup / "memory.current").write_text(f"{GiB // 4}\n")
    (root,) = cgroup_limits(proc, cgroup)
    assert root.available_bytes == 3 * GiB // 4


def test_cgroup_v1_limit_and_unlimited_sentinel(tmp_path):
    proc, cgroup = fake_tree(
        tmp_path,
        "12:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n",
        {
            "memory/docker/abc/memory.limit_in_bytes": f"{GiB}\n",
            "memory/docker/abc/memory.usage_in_bytes": f"{600 * MiB}\n",
            "memory/docker/abc/memory.stat": f"inactive_file 1\ntotal_inactive_file {100 * MiB}\n",
            "memory/docker/memory.limit_in_bytes": "9223372036854771712\n",
            "memory/docker/memory.usage_in_bytes": f"{600 * MiB}\n",
            "memory/memory.limit_in_bytes": "9223372036854771712\n",
            "memory/memory.usage_in_bytes": f"{5 * GiB}\n",
            "unified/cgroup.controllers": "\n",  # hybrid: v2 mount without the memory controller
        },
    )
    (limit,) = cgroup_limits(proc, cgroup)
    assert limit.available_bytes == GiB - 500 * MiB
    assert "cgroup v1" in limit.source and limit.source.endswith("abc/memory.limit_in_bytes")


def test_no_cgroup_files_means_no_limits(tmp_path):
    proc, cgroup = fake_tree(tmp_path, "", {})
    assert cgroup_limits(proc, cgroup) == []


def test_check_memory_names_the_tightest_limit():
    limits = [
        MemoryLimit("machine (psutil available memory)", 20 * GiB),
        MemoryLimit("cgroup v2 /sys/fs/cgroup/memory.max", GiB, limit_bytes=2 * GiB, used_bytes=GiB),
    ]
    check_memory(GiB, limits)
    with pytest.raises(InsufficientMemoryError) as info:
        check_memory(GiB + 1, limits, "1.1Gi")
    message = str(info.value)
    assert f"{GiB + 1} bytes" in message and f"{GiB} bytes" in message
    assert "cgroup v2 /sys/fs/cgroup/memory.max" in message and "'1.1Gi'" in message
