"""The handoffs page's JSON API answers bad input with 4xx and a message, never 500.

The routes run in-process (FastAPI's TestClient) with the logged-in user stubbed; the whole
page with Airflow's real auth runs in test_ui_e2e.py.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fluid_airflow.ui import api


@pytest.fixture
def client(vineyardd):
    app = api.build_app()
    app.dependency_overrides[api.current_user] = lambda: object()
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/release/run", {"dag_id": "", "run_id": ""}),
        ("/api/release/run", {"dag_id": "d", "run_id": ""}),
        ("/api/release/run", {"dag_id": "", "run_id": "r"}),
        ("/api/release/run", {}),
        ("/api/release/run", None),
        ("/api/release/object", {"name": ""}),
        ("/api/release/object", {"name": "not/an/xcom/name"}),
        ("/api/release/object", {"name": 7}),
    ],
)
def test_invalid_or_empty_input_is_a_4xx_with_a_message(client, path, body):
    response = client.post(path, json=body) if body is not None else client.post(path, content=b"{")
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.json()["detail"]


def test_releasing_a_running_run_is_a_409_naming_it_unless_forced(client, airflow_db, monkeypatch):
    """Its tasks may still read the run's objects: the page's release refuses (409, state and fix named)
    and releases with ``force``. (Authorisation is stubbed here; test_ui_e2e.py runs it for real.)"""
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    monkeypatch.setattr(api, "_require_edit", lambda user, dag_id: None)
    client.app.dependency_overrides[api.current_user] = lambda: SimpleNamespace(get_name=lambda: "tester")
    now = datetime.now(timezone.utc)
    with create_session() as session:
        run = DagRun(
            dag_id="fa_ui_running", run_id="manual__ui", run_type="manual", run_after=now, start_date=now
        )
        session.add(run)
        session.flush()
        run.set_state("running")
    body = {"dag_id": "fa_ui_running", "run_id": "manual__ui"}
    refused = client.post("/api/release/run", json=body)
    assert refused.status_code == 409, refused.text
    assert "is running" in refused.json()["detail"] and '"force": true' in refused.json()["detail"]
    forced = client.post("/api/release/run", json={**body, "force": True})
    assert forced.status_code == 200 and forced.json() == {"objects": 0, "bytes": 0}, forced.text
