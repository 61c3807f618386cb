"""The @task.fluid runner's preflight: it names the node and the missing piece."""

from __future__ import annotations

import os

import pytest

from fluid_airflow.decorators import runner


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
    assert runner.endpoint() == ("rpc", "w-0:9600")


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
