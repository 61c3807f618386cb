"""Expire DAG runs' Vineyard objects with nobody running a command: a thread in the scheduler.

The mechanism: the provider's listener (:mod:`.release_listener`). Airflow calls its
``on_starting`` when a job starts and its DAG-run hooks in the process that runs the scheduling
loop (``airflow/jobs/job.py`` and ``airflow/listeners/spec/dagrun.py``, Airflow 3.3.2); in the
``airflow scheduler`` process they start one daemon thread that, every ``[fluid]
expiry_interval`` seconds, runs ``fluid-airflow gc`` (a child process with the scheduler's
environment): release runs past their retention (``[fluid] keep_for``, ``keep_failed_for``),
deleted runs and rows, and what no name reaches. A child process, not a call: a vineyard client
in the scheduler would be inherited by the executor's worker processes it forks later, and their
tasks then failed with ``Client is not connected`` once the scheduler's client closed (measured;
docs/design.md §15).
For the same reason the scheduler's run-end release runs as ``fluid-airflow release``.

So an object is released at most ``retention + expiry_interval`` (plus one gc round)
after its run ended. The scheduler has the metadata DB; it must reach the vineyardd the tasks
use (see the README). Nowhere else (``airflow dags test``, task processes) is a thread started:
there, run ``fluid-airflow gc``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)
ROUND_TIMEOUT = 300.0  # seconds one gc round may take before it is abandoned
_started: dict[int, threading.Thread] = {}


def in_scheduler() -> bool:
    """True in the ``airflow scheduler`` process."""
    return sys.argv[1:2] == ["scheduler"]


_children: list[subprocess.Popen[bytes]] = []


def spawn(args: list[str]) -> None:
    """Run ``fluid-airflow <args>`` in a child process without waiting (its output goes to this
    process's log streams); finished children are reaped on the next call."""
    _children[:] = [c for c in _children if c.poll() is None]
    _children.append(subprocess.Popen([sys.executable, "-m", "fluid_airflow.cli", *args]))


def ensure_started(component: Any = None) -> bool:
    """Start the expiry thread once in this process if it is the scheduler; True if it runs."""
    if not in_scheduler():
        return False
    thread = _started.get(os.getpid())
    if thread is not None and thread.is_alive():
        return True
    from airflow.sdk import conf

    if not conf.get("core", "xcom_backend", fallback="").endswith("VineyardXComBackend"):
        return False
    thread = threading.Thread(target=_loop, name="fluid-airflow-expiry", daemon=True)
    _started[os.getpid()] = thread
    thread.start()
    return True


def _loop() -> None:
    from fluid_airflow import config

    while True:
        interval = config.get_int("expiry_interval")
        time.sleep(interval)
        run_once()


def run_once() -> None:
    """One round: ``fluid-airflow gc --json`` in a child process, logged; never raises."""
    command = [sys.executable, "-m", "fluid_airflow.cli", "gc", "--json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=ROUND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        log.warning("fluid-airflow expiry: gc did not finish within %s s; next round retries", ROUND_TIMEOUT)
        return
    if done.returncode != 0:
        log.warning("fluid-airflow expiry: gc failed: %s", done.stderr.strip()[-500:])
        return
    try:
        report = json.loads(done.stdout)
    except ValueError:
        log.warning("fluid-airflow expiry: gc printed no report: %s", done.stdout[-300:])
        return
    freed, unnamed = report["reclaimed"], report["unnamed"]
    if freed["objects"] or unnamed["objects"]:
        log.info(
            "fluid-airflow expiry: released %d objects (%d bytes) of runs past their retention or "
            "deleted, and %d objects no name reached",
            freed["objects"], freed["bytes"], unnamed["objects"],
        )  # fmt: skip
