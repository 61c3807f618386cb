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
