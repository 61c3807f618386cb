"""The handoffs page end to end: a real Airflow deployment (tests/deployment.py: api-server,
scheduler, dag-processor, triggerer; LocalExecutor, SQLite), its vineyardd, and Debian's headless
Chromium driven through Selenium.

The demo DAG runs with ``[fluid] keep_for`` = 3600 s, so its objects are still held when the run
ends; the page must list exactly them, and its "Release run" button must free their bytes.
A screenshot is saved in ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import REPO

from fluid_airflow.hooks.vineyard import VineyardHook
from fluid_airflow.vineyard.lifecycle.release import run_objects

DAG = "flights_delay_regression"
ARTIFACTS = REPO / "test-artifacts"
pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """Debian's chromium and chromium-driver, installed with apt-get when missing (needs root)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
            check=True,
            env=env,
            timeout=900,
        )
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def airflow(make_deployment):
    """A real deployment (tests/deployment.py) that keeps a run's objects for an hour after it ends."""
    return make_deployment(AIRFLOW__FLUID__KEEP_FOR="3600")


def test_handoffs_page_lists_the_run_and_releases_it(airflow, chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, daemon = airflow.base_url, airflow.vineyardd
    api = "/fluid/api"

    # Refused without a login, and for a user who may not edit the DAG.
    assert airflow.request("GET", f"{api}/handoffs", auth=False)[0] == 401
    assert airflow.request("POST", f"{api}/release/run", {"dag_id": DAG, "run_id": "x"}, auth=False)[0] == 401
    admin = airflow.token
    run_id = airflow.trigger(DAG)
    assert airflow.wait_run(DAG, run_id, timeout=600) == "success", airflow.task_states(DAG, run_id)
    client = VineyardHook(ipc_socket=str(daemon.socket_path)).get_conn()
    held = run_objects(client, DAG, run_id)
    used = client.status.memory_usage
    assert held and used > 0  # keep_for holds the run's objects after it ended
    # Airflow's own XCom view shows the stored reference: it reads as one line, payload untouched.
    status, xcom = airflow.request(
        "GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/load_flights/xcomEntries/return_value"
    )
    assert status == 200, xcom
    summary = (xcom["value"] if isinstance(xcom["value"], dict) else json.loads(xcom["value"]))["summary"]
    assert summary.startswith("pandas.DataFrame 336776 x 19, ") and summary.endswith(
        "released 3600 s after run end; if the run fails, 86400 s after run end"
    )
    # The plugin registers the page (API server) and its menu entry (UI).
    plugins = airflow.request("GET", "/api/v2/plugins")[1]["plugins"]
    ours = next(p for p in plugins if p["name"] == "fluid_airflow")
    assert ours["fastapi_apps"][0]["url_prefix"] == "/fluid"
    assert ours["external_views"][0]["href"] == "/fluid/handoffs"
    status, body = airflow.request(
        "POST", f"{api}/release/run", {"dag_id": DAG, "run_id": run_id}, token=airflow.login("viewer")
    )
    assert status == 403 and "not allowed to edit" in body["detail"]
    assert client.status.memory_usage == used

    browser_path, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        driver.get(f"{base}/fluid/handoffs")
        assert "/fluid/handoffs" not in driver.current_url.split("?")[0]  # sent to the login page
        driver.add_cookie({"name": "_token", "value": admin, "path": "/"})
        driver.get(f"{base}/fluid/handoffs?dag_id={DAG}")
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded")
        )
        section = driver.find_element(By.CSS_SELECTOR, f'section.run[data-run-id="{run_id}"]')
        rows = section.find_elements(By.CSS_SELECTOR, "tr.object")
        assert {r.get_attribute("data-name") for r in rows} == set(held)
        assert {r.find_element(By.CSS_SELECTOR, "td.state").text for r in rows} == {"live"}
        instance = driver.find_element(By.CSS_SELECTOR, "#instances tbody tr").text
        assert str(daemon.socket_path) in instance
        driver.save_screenshot(str(ARTIFACTS / "ui-handoffs.png"))

        # One object first: its row's Release button frees exactly that object.
        one = min(held)
        row = section.find_element(By.CSS_SELECTOR, f'tr.object[data-name="{one}"]')
        row.find_element(By.CSS_SELECTOR, "button.release-object").click()
        WebDriverWait(driver, 30).until(
            lambda d: (
                "Released" in d.find_element(By.ID, "message").text
                and d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true"
            )
        )
        assert set(run_objects(client, DAG, run_id)) == set(held) - {one}
        assert client.status.memory_usage < used

        driver.find_element(
            By.CSS_SELECTOR, f'section.run[data-run-id="{run_id}"] button.release-run'
        ).click()
        WebDriverWait(driver, 30).until(
            lambda d: (
                f"{len(held) - 1} object(s)" in d.find_element(By.ID, "message").text
                and d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true"
            )
        )
        driver.save_screenshot(str(ARTIFACTS / "ui-handoffs-released.png"))
    finally:
        driver.quit()
    assert run_objects(client, DAG, run_id) == {}
    assert client.status.memory_usage == 0  # vineyardd freed those bytes
