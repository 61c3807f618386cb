"""Where small arrays and DataFrames should stop being kept inline: ``[fluid] inline_payload_floor``.

For each kind (float64 ndarray, numeric DataFrame with 4 float64 columns) and payload size, one
XCom hand-off is timed both ways through the real backend, in this process:

- ``vineyard``: ``serialize_value`` with the floor at 0 (put into a local vineyardd, read back
  and checked, named), the reference row written to and read from SQLite, ``deserialize_value``
  (get from vineyardd);
- ``inline``: ``serialize_value`` with the floor above the size (the row holds the value), the
  row written to and read from SQLite, ``deserialize_value``.

SQLite stands in for Airflow's metadata DB so that the inline row's larger size is paid for.
Each case is the median of ``RUNS`` hand-offs; the Vineyard objects are released after each
(untimed: the release happens at run end, outside the task). Prints one line per case with the
ratio inline/vineyard, then per kind the largest size up to which inline is never slower, and
the smaller of those as the suggested floor.

``python -m bench.inline_floor`` (about a minute on 2 cores); starts and stops its own vineyardd.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

SIZES = [1 << p for p in range(6, 19)]  # 64 B ... 256 KiB
RUNS = 21
SCOPE = {"dag_id": "bench", "run_id": "manual__bench", "task_id": "t", "map_index": -1}
Row = namedtuple("Row", ["value"])


def make(kind: str, size: int) -> Any:
    """A float64 ndarray (16 columns) or a 4-column float64 DataFrame of about ``size`` bytes."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    if kind == "ndarray":
        return rng.random((max(1, size // 128), 16))
    return pd.DataFrame(rng.random((max(1, size // 32), 4)), columns=list("abcd"))


def hand_off(value: Any, db: sqlite3.Connection, key: str) -> float:
    """Seconds for one push + DB round trip + pull through the configured backend."""
    from fluid_airflow.vineyard.xcom import VineyardXComBackend as Backend

    start = time.perf_counter()
    row = Backend.serialize_value(value, key=key, **SCOPE)
    db.execute("INSERT OR REPLACE INTO xcom VALUES (?, ?)", (key, json.dumps(row)))
    db.commit()
    text = db.execute("SELECT value FROM xcom WHERE key = ?", (key,)).fetchone()[0]
    Backend.deserialize_value(Row(json.loads(text)))
    elapsed = time.perf_counter() - start
    Backend.purge(type("X", (), {"value": row, "key": key, **SCOPE})())
    return elapsed


def measure(db: sqlite3.Connection) -> dict[tuple[str, int], dict[str, float]]:
    """Median seconds per (kind, size) for both ways."""
    from fluid_airflow.vineyard.data.inline import payload_bytes

    results: dict[tuple[str, int], dict[str, float]] = {}
    for kind in ("ndarray", "dataframe"):
        for size in SIZES:
            value = make(kind, size)
            case: dict[str, float] = {"payload": float(payload_bytes(value) or 0)}
            for way, floor in (("vineyard", "0"), ("inline", str(1 << 40))):
                os.environ["AIRFLOW__FLUID__INLINE_PAYLOAD_FLOOR"] = floor
                times = [hand_off(value, db, f"{kind}_{size}_{i}") for i in range(RUNS)]
                case[way] = statistics.median(times[1:])  # the first warms imports and caches
            results[(kind, size)] = case
    return results


def _no_slower_up_to(results: dict[tuple[str, int], dict[str, float]], kind: str) -> int:
    """The largest size up to which every smaller size of ``kind`` is no slower inline (0: none)."""
    largest = 0
    for size in SIZES:
        if results[(kind, size)]["inline"] > results[(kind, size)]["vineyard"]:
            break
        largest = size
    return largest


def main() -> None:
    """Start a vineyardd, measure, print, stop it."""
    with tempfile.TemporaryDirectory(prefix="fa-floor-", dir="/tmp") as tmp:
        os.environ.update(
            AIRFLOW_HOME=tmp,
            AIRFLOW__FLUID__RUNTIME_DIR=tmp,
            AIRFLOW__FLUID__VINEYARD_SOCKET="",
            AIRFLOW__FLUID__KEEP_FOR="-1",
            AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        )
        from fluid_airflow.vineyard.local.daemon import LocalVineyardd

        daemon = LocalVineyardd(Path(tmp))
        daemon.start("512Mi")
        db = sqlite3.connect(Path(tmp) / "xcom.db")
        try:
            db.execute("CREATE TABLE xcom (key TEXT PRIMARY KEY, value TEXT)")
            results = measure(db)
        finally:
            db.close()
            daemon.stop()
    for (kind, _size), case in results.items():
        ratio = case["inline"] / case["vineyard"]
        print(
            f"{kind:9s} payload {int(case['payload']):7d} B  vineyard {case['vineyard'] * 1e3:7.3f} ms  "
            f"inline {case['inline'] * 1e3:7.3f} ms  inline/vineyard {ratio:5.2f}"
        )
    no_slower = {kind: _no_slower_up_to(results, kind) for kind in ("ndarray", "dataframe")}
    print(f"inline no slower up to (nominal bytes): {no_slower}")
    print(f"suggested inline_payload_floor = {min(no_slower.values())}")


if __name__ == "__main__":
    main()
