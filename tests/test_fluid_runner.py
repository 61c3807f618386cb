"""The @task.fluid runner's preflight: it names the node and the missing piece."""

from __future__ import annotations

import os

import pytest

from fluid_airflow.runner import task as runner


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("VINEYARD_IPC_SOCKET", "VINEYARD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NODE_NAME", "node-7")
    return monkeypatch


def test_no_endpoint_at_all(clean_env):
    with pytest.raises(
        runner.PreflightError, match="node node-7: neither VINEYARD_IPC_SOCKET nor VINEYARD_CONFIG"
    ):
        runner.endpoint()


def test_missing_config_file_says_the_dataset_is_not_mounted(clean_env, tmp_path):
    clean_env.setenv("VINEYARD_CONFIG", str(tmp_path / "vineyard-config.yaml"))
    with pytest.raises(runner.PreflightError, match=r"node node-7: the Vineyard config .* is missing"):
        runner.endpoint()


def test_config_with_socket_on_this_node_uses_ipc(clean_env, vineyardd, tmp_path):
    os.link(vineyardd.socket_path, tmp_path / "vineyard-worker.sock")  # as Fluid's fuse hard-links it
    config = tmp_path / "vineyard-config.yaml"
    # An RPC endpoint that refuses at once: vineyard.connect also tries it (an unresolvable one costs 10 s).
    config.write_text("Vineyard:\n  IPCSocket: vineyard-worker.sock\n  RPCEndpoint: 127.0.0.1:1\n")
    clean_env.setenv("VINEYARD_CONFIG", str(config))
    assert runner.endpoint() == ("ipc", str(tmp_path / "vineyard-worker.sock"))
    assert runner.connect().status.instance_id == 0


def test_config_without_local_worker_falls_back_to_rpc(clean_env, tmp_path):
    config = tmp_path / "vineyard-config.yaml"
    config.write_text("Vineyard:\n  IPCSocket: vineyard-worker.sock\n  RPCEndpoint: w-0:9600,w-1:9600\n")
    clean_env.setenv("VINEYARD_CONFIG", str(config))
    assert runner.endpoint() == ("rpc", "w-0:9600,w-1:9600")  # connect() tries each in order


def test_config_with_neither_is_refused(clean_env, tmp_path):
    config = tmp_path / "vineyard-config.yaml"
    config.write_text("Vineyard:\n  IPCSocket: vineyard-worker.sock\n")
    clean_env.setenv("VINEYARD_CONFIG", str(config))
    with pytest.raises(runner.PreflightError, match="no usable IPCSocket"):
        runner.endpoint()


def test_vineyardd_without_room_is_refused(clean_env, vineyardd):
    clean_env.setenv("VINEYARD_IPC_SOCKET", str(vineyardd.socket_path))
    with pytest.raises(runner.PreflightError, match="bytes of shared memory free"):
        runner.connect(min_free=1 << 40)


def test_main_exits_3_with_the_preflight_message(clean_env, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text('{"function": "f", "source": "def f(): pass", "inputs": {}, "scope": {}}')
    assert runner.main(["--spec", str(spec), "--output", str(tmp_path / "out.json")]) == 3
    err = capsys.readouterr().err
    assert "preflight failed for Dataset (unknown): node node-7" in err and "Is the Dataset bound" in err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.integration  # a fresh interpreter
def test_runner_environment_lets_the_runner_import_airflow_under_the_supervisor():
    """The task supervisor's environment (DB blocked, server context) kills a fresh interpreter
    that imports Airflow; the runner's environment must not."""
    import subprocess
    import sys

    from fluid_airflow.runner.local_run import runner_environment

    supervised = {
        **os.environ,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///",
        "_AIRFLOW_PROCESS_CONTEXT": "server",
    }
    probe = [sys.executable, "-c", "import airflow.sdk.serde, fluid_airflow.vineyard.xcom; print('ok')"]
    broken = subprocess.run(probe, env=supervised, capture_output=True, text=True, timeout=120)
    assert broken.returncode != 0 and "Could not parse SQLAlchemy URL" in broken.stderr  # the defect
    env = runner_environment(supervised)
    assert "_AIRFLOW_PROCESS_CONTEXT" not in env and env["PYTHONUNBUFFERED"] == "1"
    fixed = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120)
    assert fixed.returncode == 0 and fixed.stdout.strip() == "ok", fixed.stderr


def test_rpc_fallback_tries_every_endpoint(clean_env, rpc_vineyardd, tmp_path):
    """Issue 15 defect 9: as vineyard's own client, the runner tries each RPCEndpoint in order (here the first
    refuses) and uses the first that answers."""
    config = tmp_path / "vineyard-config.yaml"
    endpoints = f"127.0.0.1:1, 127.0.0.1:{rpc_vineyardd.port}"
    config.write_text(f"Vineyard:\n  IPCSocket: vineyard-worker.sock\n  RPCEndpoint: '{endpoints}'\n")
    clean_env.setenv("VINEYARD_CONFIG", str(config))
    client = runner.connect()
    assert client.status.instance_id == 0 and client.rpc_endpoint.endswith(f":{rpc_vineyardd.port}")


def test_rpc_fallback_names_every_endpoint_when_none_answers(clean_env, tmp_path):
    config = tmp_path / "vineyard-config.yaml"
    config.write_text("Vineyard:\n  RPCEndpoint: 127.0.0.1:1,127.0.0.1:2\n")
    clean_env.setenv("VINEYARD_CONFIG", str(config))
    with pytest.raises(runner.PreflightError, match="node node-7: vineyardd does not answer at") as failed:
        runner.connect()
    assert "rpc 127.0.0.1:1: " in str(failed.value) and "rpc 127.0.0.1:2: " in str(failed.value)
