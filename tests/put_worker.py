"""A producer process for the leak tests: builds a DataFrame, waits for a go file, then stores
it through the XCom backend exactly as a task's push does, and prints the outcome as JSON.

Usage: ``python tests/put_worker.py <task_id> <columns> <MiB per column> [go-file]``; the
backend's settings come from the environment (AIRFLOW__FLUID__*). With ``PAUSE_MID_PUT=<seconds>``
the put stops that long between allocating its blob and writing it (a put half-way, for the
tests to kill, stop or suspend something there).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    task_id, columns, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    go = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    import numpy as np
    import pandas as pd

    from fluid_airflow.vineyard.client import arrow_stream
    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    pause = float(os.environ.get("PAUSE_MID_PUT") or 0)
    if pause:
        populate = arrow_stream.populate

        def pause_then_populate(address: int, size: int) -> None:  # right after create_blob
            time.sleep(pause)
            populate(address, size)

        arrow_stream.populate = pause_then_populate

    rows = mib * 2**20 // 8
    frame = pd.DataFrame({f"c{i}": np.full(rows, float(i)) for i in range(columns)})
    print("OUTCOME", json.dumps({"ready": True}), flush=True)
    while go is not None and not go.exists():
        time.sleep(0.005)
    try:
        ref = VineyardXComBackend.serialize_value(
            frame,
            key="return_value",
            task_id=task_id,
            dag_id="fa_leaks",
            run_id="manual__leaks",
            map_index=-1,
        )
        print("OUTCOME", json.dumps({"stored": ref}), flush=True)
    except Exception as exc:
        print("OUTCOME", json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)


if __name__ == "__main__":
    main()
