"""The handoffs page end to end: real Airflow (api-server, scheduler, dag-processor; LocalExecutor,
SQLite), a real vineyardd, and Debian's headless Chromium driven through Selenium.

The demo DAG runs with ``[fluid] keep_for`` = 3600 s, so its objects are still held when the run
ends; the page must list exactly them, and its "Release run" button must free their bytes.
A screenshot is saved in ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import BACKEND, BIN, REPO, remove_and_check_nothing_runs

from fluid_airflow.hooks.vineyard import VineyardHook, close_clients
from fluid_airflow.vineyard.daemon import LocalVineyardd
from fluid_airflow.vineyard.etcd import free_port
from fluid_airflow.vineyard.release import run_objects

DAG = "flights_delay_regression"
ARTIFACTS = REPO / "test-artifacts"
PASSWORDS = {"admin": "admin-pass", "viewer": "viewer-pass"}


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


def _request(url: str, method: str = "GET", body: dict | None = None, token: str | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def airflow(runtime):
    """api-server, scheduler and dag-processor on a fresh AIRFLOW_HOME; stopped by process group."""
    home = Path(tempfile.mkdtemp(prefix="fa-ui-"))
    (home / "dags").mkdir()
    (home / "dags" / f"{DAG}.py").symlink_to(REPO / "dags" / f"{DAG}.py")
    (home / "passwords.json").write_text(json.dumps(PASSWORDS))
    daemon = LocalVineyardd(runtime)
    daemon.start("2Gi")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__XCOM_BACKEND": BACKEND,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API_AUTH__JWT_SECRET": "fluid-airflow-e2e-test-secret",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__FLUID__VINEYARD_SOCKET": str(daemon.socket_path),
        "AIRFLOW__FLUID__KEEP_FOR": "3600",
    }
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    procs = []
    logs = []
    try:
        for command in (["api-server", "--port", str(port)], ["scheduler"], ["dag-processor"]):
            log = open(home / f"{command[0]}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [str(BIN / "airflow"), *command], env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if _request(f"{base}/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            raise AssertionError("api-server did not answer within 120 s:\n" + _tail(home / "api-server.log"))
        yield {"base": base, "home": home, "daemon": daemon}
    finally:
        for proc in procs:
            with_group(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with_group(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for log in logs:
            log.close()
        close_clients(str(daemon.socket_path))
        remove_and_check_nothing_runs(home)


def with_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _token(base: str, user: str) -> str:
    status, body = _request(f"{base}/auth/token", "POST", {"username": user, "password": PASSWORDS[user]})
    assert status in (200, 201), body
    return body["access_token"]


def _run_demo(base: str, token: str, home: Path) -> str:
    deadline = time.monotonic() + 120
    while _request(f"{base}/api/v2/dags/{DAG}", token=token)[0] != 200:
        assert time.monotonic() < deadline, "DAG not parsed:\n" + _tail(home / "dag-processor.log")
        time.sleep(2)
    assert _request(f"{base}/api/v2/dags/{DAG}", "PATCH", {"is_paused": False}, token)[0] == 200
    status, run = _request(f"{base}/api/v2/dags/{DAG}/dagRuns", "POST", {"logical_date": None}, token)
    assert status == 200, run
    deadline = time.monotonic() + 600
    while True:
        state = _request(f"{base}/api/v2/dags/{DAG}/dagRuns/{run['dag_run_id']}", token=token)[1]["state"]
        if state in ("success", "failed"):
            break
        assert time.monotonic() < deadline, "demo run did not finish:\n" + _tail(home / "scheduler.log")
        time.sleep(3)
    assert state == "success", _tail(home / "scheduler.log")
    return run["dag_run_id"]


def test_handoffs_page_lists_the_run_and_releases_it(airflow, chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, daemon = airflow["base"], airflow["daemon"]
    api = f"{base}/fluid/api"

    # Refused without a login, and for a user who may not edit the DAG.
    assert _request(f"{api}/handoffs")[0] == 401
    assert _request(f"{api}/release/run", "POST", {"dag_id": DAG, "run_id": "x"})[0] == 401
    admin = _token(base, "admin")
    run_id = _run_demo(base, admin, airflow["home"])
    client = VineyardHook(ipc_socket=str(daemon.socket_path)).get_conn()
    held = run_objects(client, DAG, run_id)
    used = client.status.memory_usage
    assert held and used > 0  # keep_for holds the run's objects after it ended
    # Airflow's own XCom view shows the stored reference: it reads as one line, payload untouched.
    status, xcom = _request(
        f"{base}/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/load_flights/xcomEntries/return_value",
        token=admin,
    )
    assert status == 200, xcom
    summary = (xcom["value"] if isinstance(xcom["value"], dict) else json.loads(xcom["value"]))["summary"]
    assert summary.startswith("pandas.DataFrame 336776 x 19, ") and summary.endswith(
        "released 3600 s after run end"
    )
    # The plugin registers the page (API server) and its menu entry (UI).
    plugins = _request(f"{base}/api/v2/plugins", token=admin)[1]["plugins"]
    ours = next(p for p in plugins if p["name"] == "fluid_airflow")
    assert ours["fastapi_apps"][0]["url_prefix"] == "/fluid"
    assert ours["external_views"][0]["href"] == "/fluid/handoffs"
    status, body = _request(
        f"{api}/release/run", "POST", {"dag_id": DAG, "run_id": run_id}, _token(base, "viewer")
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
