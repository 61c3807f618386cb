"""VineyardHook: endpoints from connections, one client per process, clear connection errors."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import BIN

from fluid_airflow.exceptions import VineyardConnectionError
from fluid_airflow.hooks.vineyard import VineyardHook


def test_connection_extra_names_the_ipc_socket(vineyardd, monkeypatch):
    conn = {"conn_type": "vineyard", "extra": {"ipc_socket": str(vineyardd.socket_path)}}
    monkeypatch.setenv("AIRFLOW_CONN_VINEYARD_TEST", json.dumps(conn))
    hook = VineyardHook("vineyard_test")
    assert hook.endpoint() == ("ipc", str(vineyardd.socket_path))
    ok, message = hook.test_connection()
    assert ok and "instance 0" in message


def test_connection_without_endpoint_is_refused_with_fix(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_VINEYARD_EMPTY", json.dumps({"conn_type": "vineyard"}))
    with pytest.raises(VineyardConnectionError, match="ipc_socket"):
        VineyardHook("vineyard_empty").endpoint()


def test_missing_socket_fails_fast_and_says_how_to_start(tmp_path):
    started = time.monotonic()
    with pytest.raises(VineyardConnectionError, match="fluid-airflow vineyard start"):
        VineyardHook(ipc_socket=str(tmp_path / "none.sock")).get_conn()
    assert time.monotonic() - started < 2


def test_stale_socket_file_fails_within_seconds(tmp_path):
    import socket

    path = tmp_path / "stale.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the file stays, nobody listens: what a killed vineyardd leaves behind
    started = time.monotonic()
    with pytest.raises(VineyardConnectionError, match="does not answer"):
        VineyardHook(ipc_socket=str(path)).get_conn()
    assert time.monotonic() - started < 5


def test_one_client_per_process_and_a_new_one_after_fork(vineyardd):
    hook = VineyardHook(ipc_socket=str(vineyardd.socket_path))
    parent = hook.get_conn()
    assert hook.get_conn() is parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's client
        try:
            child = hook.get_conn()
            ok = child is not parent and child.connected and child.status.instance_id == 0
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert hook.get_conn() is parent and parent.status.instance_id == 0


def test_config_section_defaults_are_registered(airflow_db):
    out = subprocess.run(
        [str(BIN / "airflow"), "config", "get-value", "fluid", "name_prefix"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__FLUID__")},
    )
    assert out.stdout.strip() == "airflow"


def test_a_path_that_is_not_a_socket_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file", tmp_path):
        with pytest.raises(VineyardConnectionError, match="is not a UNIX socket"):
            VineyardHook(ipc_socket=str(path)).get_conn()


def test_missing_vineyard_connection_names_the_option(monkeypatch):
    with pytest.raises(
        VineyardConnectionError, match=r"'nope' \(type vineyard\) is not defined.*vineyard_conn_id"
    ):
        VineyardHook("nope").endpoint()


def test_config_values_are_checked_with_their_units(monkeypatch, airflow_db):
    from fluid_airflow import config
    from fluid_airflow.vineyard.data.naming import xcom_object_name

    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "forever")
    with pytest.raises(ValueError, match="whole number of seconds"):
        config.get_int("keep_for")
    with pytest.raises(ValueError, match="-1 keeps a run's objects"):
        config.get_int("keep_for")
    monkeypatch.setenv("AIRFLOW__FLUID__KEEP_FOR", "0")
    monkeypatch.setenv("AIRFLOW__FLUID__INLINE_THRESHOLD", "-5")
    with pytest.raises(ValueError, match="below its minimum 0"):
        config.get_int("inline_threshold")
    import numpy as np

    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    with pytest.raises(ValueError, match="inline_threshold = -5"):  # every push checks, arrays too
        VineyardXComBackend.serialize_value(np.arange(3.0), key="k", task_id="t", dag_id="d", run_id="r")
    with pytest.raises(ValueError, match=r"\[fluid\] name_prefix is empty"):
        xcom_object_name(prefix="", dag_id="d", run_id="r", task_id="t", map_index=-1, key="k")
