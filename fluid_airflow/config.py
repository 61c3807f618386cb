"""The ``[fluid]`` Airflow config section: one table of options, read lazily.

The same table feeds the provider info (so ``airflow config list`` documents it) and the
fallbacks used here, so a default can never differ between the two. Every option can be set
in ``airflow.cfg`` or as ``AIRFLOW__FLUID__<OPTION>``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

SECTION = "fluid"

OPTIONS: dict[str, dict[str, Any]] = {
    "vineyard_conn_id": {
        "description": "Airflow connection (type ``vineyard``) the XCom backend uses. Empty: use "
        "``vineyard_socket`` instead.",
        "type": "string",
        "example": "vineyard_default",
        "default": "",
    },
    "vineyard_socket": {
        "description": "IPC socket of the vineyardd the XCom backend uses when no connection is set. "
        "Empty: the socket of the local vineyardd in ``runtime_dir`` (``fluid-airflow vineyard start``).",
        "type": "string",
        "example": "/var/run/vineyard/vineyard-worker.sock",
        "default": "",
    },
    "runtime_dir": {
        "description": "Folder of the local vineyardd: its IPC socket, pid, log and state files. Empty: "
        "``$XDG_RUNTIME_DIR/fluid-airflow``, else ``<system temp dir>/fluid-airflow-<uid>``.",
        "type": "string",
        "example": "/run/user/1000/fluid-airflow",
        "default": "",
    },
    "socket_group": {
        "description": "Group allowed to use the local vineyardd's IPC socket (its runtime folder becomes "
        "0710 and the socket 0660, both of this group). Empty: only the user who started it (0700 / 0600); "
        "anyone who can open the socket can read and delete every object.",
        "type": "string",
        "example": "airflow",
        "default": "",
    },
    "local_vineyard_size": {
        "description": "Shared memory of the local vineyardd, in vineyardd's size syntax: 512Mi, 4Gi, "
        "1.5G or plain bytes; every unit is binary (1G = 1Gi = 2**30 bytes, unlike Kubernetes).",
        "type": "string",
        "example": "8Gi",
        "default": "2Gi",
    },
    "vineyard_timeout": {
        "description": "Seconds any single call to vineyardd (connect handshake, put, get, delete, "
        "status) may wait for its answer before the task fails with VineyardTimeoutError. Bounds "
        "a hung vineyardd or one waiting for an unreachable etcd; a slow but working call of a big "
        "value still finishes, since the wait is per answer, not per transfer.",
        "type": "float",
        "example": "120",
        "default": "30",
    },
    "inline_threshold": {
        "description": "JSON-able XCom values whose JSON text is below this many bytes stay inline in "
        "Airflow's DB; larger ones go to Vineyard. Arrays and DataFrames follow inline_payload_floor; "
        "Series, Arrow, polars and torch values always go to Vineyard.",
        "type": "integer",
        "example": "65536",
        "default": "16384",
        "unit": "bytes",
        "min": 0,
    },
    "inline_payload_floor": {
        "description": "numpy arrays and pandas DataFrames whose data is below this many bytes (ndarray "
        "nbytes; DataFrame memory_usage(deep=True) with its index) stay inline in Airflow's DB, readable "
        "in the UI and kept across vineyardd restarts, when they round-trip exactly (else they go to "
        "Vineyard). 0: every array and DataFrame goes to Vineyard. Default measured with "
        "bench/inline_floor.py.",
        "type": "integer",
        "example": "0",
        "default": "8192",
        "unit": "bytes",
        "min": 0,
    },
    "keep_for": {
        "description": "Seconds a finished DAG run's Vineyard objects are kept before they are released "
        "(0: at run end, by the provider's listener; -1: never, only `fluid-airflow gc` or the release "
        "operator free them). Raise it to inspect a run's intermediates after it ends.",
        "type": "integer",
        "example": "3600",
        "default": "0",
        "unit": "seconds",
        "min": -1,
        "hint": "; -1 keeps a run's objects until `fluid-airflow gc` or the release operator frees them",
    },
    "reclaim_unnamed": {
        "description": "Let `fluid-airflow gc` and memory admission delete objects of the vineyardd that "
        "no name reaches (left by failed or killed puts), whenever no put is in flight. Set False for a "
        "vineyardd shared with non-Airflow clients that keep unnamed objects on purpose.",
        "type": "boolean",
        "example": "False",
        "default": "True",
    },
    "keep_failed_for": {
        "description": "Seconds a failed DAG run's Vineyard objects are kept after it ends, so that "
        "clearing the failed task (after a fix) reuses its inputs instead of recomputing them; a "
        "cleared run that then succeeds is released at its end as usual. Never less than keep_for; "
        "-1: never automatically.",
        "type": "integer",
        "example": "3600",
        "default": "86400",
        "unit": "seconds",
        "min": -1,
        "hint": "; -1 keeps a failed run's objects until gc or the release operator frees them",
    },
    "expiry_interval": {
        "description": "Seconds between two rounds of the scheduler's expiry thread, which releases "
        "runs past keep_for / keep_failed_for (what `fluid-airflow gc` does) with no one running it.",
        "type": "integer",
        "example": "300",
        "default": "60",
        "unit": "seconds",
        "min": 1,
    },
    "name_prefix": {
        "description": "First component of every Vineyard object name the XCom backend creates "
        "(``<prefix>/<dag_id>/<run_id>/<task_id>/<map_index>/<key>``).",
        "type": "string",
        "example": "airflow",
        "default": "airflow",
    },
}


def get(option: str) -> str:
    """Return ``[fluid] <option>`` as a string, falling back to the default in :data:`OPTIONS`.

    :raises KeyError: ``option`` is not one of :data:`OPTIONS`.
    """
    default = OPTIONS[option]["default"]
    # Imported lazily: reading Airflow's config costs ~1 s and this module is imported by the CLI.
    from airflow.sdk import conf

    return conf.get(SECTION, option, fallback=default)


def get_bool(option: str) -> bool:
    """Return ``[fluid] <option>`` as a bool. :raises ValueError: not true/false (or 1/0, yes/no)."""
    raw = get(option).strip().lower()
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    raise ValueError(
        f"[{SECTION}] {option} = {raw!r} is not a boolean; set AIRFLOW__FLUID__{option.upper()} to "
        "True or False"
    )


def get_int(option: str) -> int:
    """Return ``[fluid] <option>`` as an int. :raises ValueError: the value is not an integer."""
    raw = get(option)
    unit = OPTIONS[option].get("unit", "")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"[{SECTION}] {option} = {raw!r} is not an integer; set AIRFLOW__FLUID__{option.upper()} "
            f"to a whole number{' of ' + unit if unit else ''}{OPTIONS[option].get('hint', '')}"
        ) from None
    if value < OPTIONS[option].get("min", value):
        raise ValueError(
            f"[{SECTION}] {option} = {value} is below its minimum {OPTIONS[option]['min']}; set "
            f"AIRFLOW__FLUID__{option.upper()} to a whole number{' of ' + unit if unit else ''} >= "
            f"{OPTIONS[option]['min']}"
        )
    return value


def get_seconds(option: str) -> float:
    """Return ``[fluid] <option>`` as positive seconds. :raises ValueError: not a positive number."""
    raw = get(option)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(
            f"[{SECTION}] {option} = {raw!r} is not a positive number of seconds; set "
            f"AIRFLOW__FLUID__{option.upper()} to e.g. 30"
        )
    return value


def default_runtime_dir() -> Path:
    """The local vineyardd's folder when ``[fluid] runtime_dir`` is empty.

    ``$XDG_RUNTIME_DIR/fluid-airflow`` when that variable is set, else
    ``<tempfile.gettempdir()>/fluid-airflow-<uid>``. Short on purpose: an IPC socket path must fit
    in ``sockaddr_un.sun_path`` (107 bytes on Linux).
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "fluid-airflow"
    return Path(tempfile.gettempdir()) / f"fluid-airflow-{os.getuid()}"


def runtime_dir() -> Path:
    """``[fluid] runtime_dir``, or :func:`default_runtime_dir` when it is empty."""
    configured = get("runtime_dir")
    return Path(configured).expanduser() if configured else default_runtime_dir()


def local_socket_path(runtime: Path | None = None) -> Path:
    """The IPC socket of the local vineyardd kept in ``runtime`` (default :func:`runtime_dir`)."""
    return (runtime or runtime_dir()) / "vineyard.sock"


def vineyard_socket() -> str:
    """``[fluid] vineyard_socket``, or the local vineyardd's socket when it is empty."""
    return get("vineyard_socket") or str(local_socket_path())


def retention(run_state: str) -> int:
    """Seconds a finished DAG run's objects are kept after it ends; -1: never automatically.

    ``[fluid] keep_for`` for a successful run; for a failed one ``[fluid] keep_failed_for``, but
    never less than ``keep_for`` (and -1 if either is -1).
    """
    keep_for = get_int("keep_for")
    if str(run_state) != "failed":
        return keep_for
    keep_failed_for = get_int("keep_failed_for")
    if -1 in (keep_for, keep_failed_for):
        return -1
    return max(keep_for, keep_failed_for)
