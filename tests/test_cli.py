"""``fluid-airflow vineyard start|stop|status`` run as the installed console script.

Daemons started in-process (fast) are driven through the CLI in subprocesses; each runtime dir is
checked at the end for processes left running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import gone

from fluid_airflow.vineyard.local.daemon import LocalVineyardd

SCRIPT = Path(sys.executable).parent / "fluid-airflow"
MiB = 1 << 20


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__FLUID__")}
    return {**env, **extra}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "vineyard", *args], capture_output=True, text=True, env=env or cli_env(), timeout=60
    )


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(SCRIPT), "vineyard", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def test_script_is_installed():
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK)


def test_start_prints_socket_and_export_line(runtime):
    result = cli("start", "--runtime-dir", str(runtime), "--size", "32Mi", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    sock = runtime / "vineyard.sock"
    assert f"socket {sock}" in result.stdout
    assert f"export AIRFLOW__FLUID__VINEYARD_SOCKET={sock}\n" in result.stdout
    status = LocalVineyardd(runtime).status()
    assert status.running and status.memory_limit == 32 * MiB
    assert f"pid {status.pid}" in result.stdout


def test_reserve_memory_takes_the_whole_size_at_start(runtime):
    import psutil

    result = cli("start", "--runtime-dir", str(runtime), "--size", "256Mi", "--reserve-memory")
    assert result.returncode == 0, result.stderr
    status = LocalVineyardd(runtime).status()
    daemon = psutil.Process(status.pid)
    assert "--reserve_memory" in daemon.cmdline()
    # Touched at start: resident although nothing is stored (without the flag: ~50 MiB, measured).
    assert daemon.memory_info().rss >= 256 * MiB, daemon.memory_info()
    assert LocalVineyardd(runtime).stop() is True


def test_start_in_configured_runtime_dir_needs_no_export(runtime):
    env = cli_env(AIRFLOW__FLUID__RUNTIME_DIR=str(runtime), AIRFLOW__FLUID__LOCAL_VINEYARD_SIZE="24Mi")
    result = cli("start", env=env)
    assert result.returncode == 0, result.stderr
    assert "nothing to export" in result.stdout and "export AIRFLOW" not in result.stdout
    assert LocalVineyardd(runtime).status().memory_limit == 24 * MiB  # size from [fluid] config


def test_status_json_exit_0_when_running(runtime):
    status = LocalVineyardd(runtime).start("16Mi")
    result = cli("status", "--runtime-dir", str(runtime), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["running"] is True and data["pid"] == status.pid and data["instance_id"] == 0
    assert data["memory_limit"] == data["size_bytes"] == 16 * MiB and data["socket"] == status.socket


def test_second_start_is_refused_with_exit_1_and_no_traceback(runtime):
    status = LocalVineyardd(runtime).start("16Mi")
    result = cli("start", "--runtime-dir", str(runtime), "--size", "16Mi")
    assert result.returncode == 1
    assert f"vineyardd pid {status.pid}" in result.stderr and "already served" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_stop_then_status_3_then_stop_again(runtime):
    pid = LocalVineyardd(runtime).start("16Mi").pid
    stopped = cli("stop", "--runtime-dir", str(runtime))
    assert stopped.returncode == 0, stopped.stderr
    assert f"vineyardd pid {pid} stopped" in stopped.stdout
    assert gone(pid)
    assert not (runtime / "vineyard.sock").exists()
    status, again = (
        spawn("status", "--runtime-dir", str(runtime)),
        spawn("stop", "--runtime-dir", str(runtime)),
    )
    out, _ = status.communicate(60)
    assert status.returncode == 3 and "not running" in out
    out, _ = again.communicate(60)
    assert again.returncode == 0 and "nothing to stop" in out


def test_errors_exit_1_with_one_message_and_no_traceback(runtime):
    # The other refusals are covered in test_daemon.py; here: how the CLI reports them.
    cases = {
        "vineyardd size '2GB' is not a memory size": ["--size", "2GB"],
        "refused: vineyardd has no bind-address flag": ["--size", "16Mi", "--rpc-port", "19600"],
    }
    runs = {
        expected: spawn("start", "--runtime-dir", str(runtime), *args) for expected, args in cases.items()
    }
    for expected, proc in runs.items():
        out, err = proc.communicate(60)
        assert proc.returncode == 1, (expected, err)
        assert expected in err and "Traceback" not in err and out == ""
        assert err.startswith("fluid-airflow vineyard start: error: ") and err.count("\n") == 1
    assert not (runtime / "vineyardd.log").exists()  # nothing was spawned


def test_usage_error_exits_2():
    result = cli("start", "--rpc-port", "not-a-number")
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_a_timeout_of_zero_or_less_is_a_usage_error_before_anything_starts(runtime):
    for value in ("0", "-5", "nan", "soon"):
        result = cli("start", "--runtime-dir", str(runtime), "--size", "16Mi", "--timeout", value)
        assert result.returncode == 2, (value, result.stderr)
        assert "--timeout" in result.stderr and repr(value) in result.stderr, result.stderr
    assert not (runtime / "vineyardd.log").exists()  # nothing was spawned
