"""Processes that play where Airflow's code runs on a cluster, for tests/test_k8s_rpc_release.py.

:func:`in_pod` wraps a command in a private mount namespace (``unshare --mount --map-root-user``, util-linux),
so that what a pod or an Airflow component sees can be played on this host without touching it:

- ``pvc``: the Dataset's PVC at ``/var/run/vineyard`` (a tmpfs over ``/run``, the folder bind-mounted at
  ``/run/vineyard``). Fluid's fuse hard-links the node's worker socket there as ``vineyard-worker.sock``
  (v6d ``docker/vineyard-fluid-fuse/entrypoint.sh`` @ v0.24.2; tests/k8s_task_play.py ``play_fuse``), so a
  process there connects to ``/var/run/vineyard/vineyard-worker.sock`` and its references name that path,
  as those a task pod writes do (the worker's own socket has the same path: Fluid v1.0.8
  ``charts/vineyard/templates/worker/statefulset.yaml``, ``--socket /var/run/vineyard/vineyard-worker.sock``);
- ``hosts``: cluster DNS, as an ``/etc/hosts`` bind-mounted over this host's, so both Python and vineyard's
  C++ client resolve a worker's ``<pod>.<service>.<namespace>`` name to its pod IP (the names and addresses
  come from the API server: tests/k8s_task_play.py ``rpc_conf``, ``cluster_dns``).

Run as a script (``python k8s_rpc_play.py <command> <dag_id> <run_id>``) it does one step of the test in
such a process and prints a JSON line: ``produce`` (a finished DAG run whose task stored two XComs),
``consume`` (read them, which migrates copies), ``purge`` (Airflow's purge of each XCom row), ``page``
(the handoffs page's API: list, then release the run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

POD_SOCKET = "/var/run/vineyard/vineyard-worker.sock"


def in_pod(argv: list[str], *, pvc: Path | None = None, hosts: Path | None = None) -> list[str]:
    """``argv`` run in a private mount namespace with ``pvc`` at ``/var/run/vineyard`` and ``hosts`` as
    ``/etc/hosts`` (either optional); nothing outside the namespace changes."""
    steps = ["set -e"]
    if hosts is not None:
        steps.append(f"mount --bind '{hosts}' /etc/hosts")
    if pvc is not None:
        steps += ["mount -t tmpfs fa-run /run", "mkdir /run/vineyard", f"mount --bind '{pvc}' /run/vineyard"]
    steps.append('exec "$@"')
    return ["unshare", "--mount", "--map-root-user", "--", "sh", "-c", "; ".join(steps), "sh", *argv]


def values() -> dict[str, Any]:
    """What the task stores: above the inline floor, so both go to Vineyard."""
    import numpy as np
    import pandas as pd

    return {
        "return_value": np.arange(300_000, dtype="float64"),
        "frame": pd.DataFrame({"a": np.arange(100_000.0), "b": np.arange(100_000, dtype=np.int64)}),
    }


def _produce(dag_id: str, run_id: str) -> dict[str, Any]:
    """A finished DAG run with one task instance whose XComs went through the backend, as the task's would."""
    from datetime import datetime, timezone

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.sdk import DAG, BaseOperator
    from airflow.utils.session import create_session

    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    now = datetime.now(timezone.utc)
    refs = {}
    with DAG(dag_id, schedule=None), create_session() as session:
        session.add(DagRun(dag_id=dag_id, run_id=run_id, run_type="manual", run_after=now, start_date=now))
        session.add(
            TaskInstance(BaseOperator(task_id="produce"), dag_version_id=None, run_id=run_id, state="success")
        )
        session.flush()
        for key, value in values().items():
            scope = {"key": key, "task_id": "produce", "dag_id": dag_id, "run_id": run_id}
            refs[key] = VineyardXComBackend.serialize_value(value, map_index=-1, **scope)
            XComModel.set(value=refs[key], serialize=False, session=session, **scope)
        session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one().set_state("success")
    return refs


def rows(dag_id: str, run_id: str) -> list[Any]:
    """The run's XCom rows as Airflow hands them to the backend (``XComModel``, value as stored)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        found = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id).all()
        session.expunge_all()
        return found


def _consume(dag_id: str, run_id: str) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from fluid_airflow.vineyard.lifecycle import migration
    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    expected = values()
    for row in rows(dag_id, run_id):
        got = VineyardXComBackend.deserialize_value(row)
        if row.key == "frame":
            pd.testing.assert_frame_equal(got, expected["frame"])
        else:
            np.testing.assert_array_equal(got, expected[row.key])
    return dict(migration.handoffs)


def _purge(dag_id: str, run_id: str) -> dict[str, Any]:
    """Purge each row; returns the warnings purge logged (it never raises) and the endpoint it used."""
    import logging

    from fluid_airflow.vineyard.xcom import VineyardXComBackend, backend_hook

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("fluid_airflow").addHandler(handler)
    for row in rows(dag_id, run_id):
        VineyardXComBackend.purge(row)
    endpoint = "" if warnings else backend_hook().get_conn().rpc_endpoint
    return {"warnings": warnings, "rpc_endpoint": endpoint}


def _page(dag_id: str, run_id: str) -> dict[str, Any]:
    """The page's API in-process (FastAPI's TestClient); the user is stubbed and allowed to read and edit
    the DAG (Airflow's own auth of these routes runs in tests/test_ui_e2e.py)."""
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from fluid_airflow.ui import api

    api._readable_dags = lambda user: {dag_id}  # type: ignore[assignment]
    api._require_edit = lambda user, dag: None  # type: ignore[assignment]
    app = api.build_app()
    app.dependency_overrides[api.current_user] = lambda: SimpleNamespace(get_name=lambda: "tester")
    client = TestClient(app, raise_server_exceptions=True)
    listed = client.get("/api/handoffs", params={"dag_id": dag_id, "run_id": run_id})
    released = client.post("/api/release/run", json={"dag_id": dag_id, "run_id": run_id})
    return {"listed": listed.json(), "released": released.json(), "status": released.status_code}


if __name__ == "__main__":
    command, dag, run = sys.argv[1:4]
    steps = {"produce": _produce, "consume": _consume, "purge": _purge, "page": _page}
    print(json.dumps(steps[command](dag, run), default=str))
