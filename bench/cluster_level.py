"""Cross-instance hand-off: a value stored on instance 0 of a local Vineyard cluster, read on 1.

Two vineyardd on one etcd (:class:`fluid_airflow.vineyard.local.cluster.LocalVineyardCluster`), each
standing for a cache node. The producer stores a numeric DataFrame through our backend on
instance 0; each read + full scan then runs in a fresh process (imports excluded), median of a
few runs:

- **local zero-copy**: our backend on instance 0, the holder (the same-node case);
- **migrated**: our backend on instance 1: probe, ``Client.migrate`` over RPC into instance 1,
  name the copy, read it zero-copy (the copy is deleted again before each run);
- **recorded copy**: our backend on instance 1 again, reusing the copy (zero-copy);
- **RPC get, compression on / off**: a ``vineyard.connect(host, port)`` client on no instance
  (what a consumer without shared memory gets: a private copy).
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
READS = ("local", "migrated", "copy", "rpc_compressed", "rpc_plain")
LABELS = {
    "local": "ours, holder instance (local zero-copy)",
    "migrated": "ours, other instance (migrate over RPC, then zero-copy)",
    "copy": "ours, other instance again (recorded copy, zero-copy)",
    "rpc_compressed": "vineyard RPC client, compression on",
    "rpc_plain": "vineyard RPC client, compression off",
}


def _read(mode: str, ref_file: str, socket: str, rpc: str) -> None:
    """Child process: import, then time one read + scan; prints ``{"seconds", "private_growth"}``."""
    from bench import data
    from bench.measure import _status
    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    vineyard = importlib.import_module("vineyard")  # after fluid_airflow's import hook

    ref = json.loads(Path(ref_file).read_text())
    os.environ["AIRFLOW__FLUID__VINEYARD_SOCKET"] = socket

    class Row:
        value = ref

    before = _status()["RssAnon"]
    started = time.perf_counter()
    if mode.startswith("rpc"):
        from fluid_airflow.vineyard.client.arrow_stream import register_resolver

        register_resolver()  # a plain vineyard client, which then reads our table objects
        host, port = rpc.rsplit(":", 1)
        client = vineyard.connect(host, int(port))
        client.compression = mode == "rpc_compressed"
        value = client.get(vineyard.ObjectID(ref["object_id"]))
    else:
        value = VineyardXComBackend.deserialize_value(Row())
    data.scan(value)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "private_growth": _status()["RssAnon"] - before}))


def run_cluster_level(ws: Any, nbytes: int, repeats: int = 3) -> list[dict[str, Any]]:
    """Start a 2-instance cluster in ``ws.runtime``, run every read ``repeats`` times, stop it.

    :returns: one dict per read: ``read``, ``label``, ``bytes``, ``seconds`` (median),
        ``private_growth`` (bytes, median), ``ratio`` (seconds / local zero-copy).
    """
    from bench import data
    from fluid_airflow.hooks.vineyard import VineyardHook
    from fluid_airflow.vineyard.data.reference import VineyardReference
    from fluid_airflow.vineyard.lifecycle import migration
    from fluid_airflow.vineyard.local.cluster import LocalVineyardCluster
    from fluid_airflow.vineyard.xcom import VineyardXComBackend

    cluster = LocalVineyardCluster(ws.runtime / "cluster", instances=2)
    size = f"{max(256, 3 * nbytes // MiB)}Mi"
    instances = cluster.start(size)
    saved = os.environ.get("AIRFLOW__FLUID__VINEYARD_SOCKET")
    ref_file = ws.disk / "cluster-ref.json"
    try:
        value, payload = data.make("df_numeric", nbytes)
        os.environ["AIRFLOW__FLUID__VINEYARD_SOCKET"] = instances[0].socket
        ref = VineyardXComBackend.serialize_value(
            value, key="return_value", task_id="produce", dag_id="bench_cluster", run_id="bench"
        )
        del value
        ref_file.write_text(json.dumps(ref))
        holder = VineyardHook(ipc_socket=instances[0].socket).get_conn()
        results = []
        for read in READS:
            socket = instances[0].socket if read == "local" else instances[1].socket
            runs = []
            for _ in range(repeats):
                if read == "migrated":
                    migration.release_copies(holder, VineyardReference.from_json(ref))
                out = subprocess.run(
                    [sys.executable, "-m", "bench.cluster_level", read, str(ref_file), socket,
                     f"127.0.0.1:{instances[0].rpc_port}"],
                    capture_output=True, text=True, timeout=900,
                )  # fmt: skip
                if out.returncode:
                    raise RuntimeError(f"bench: {read} read failed:\n{out.stderr[-3000:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            results.append(
                {
                    "read": read,
                    "label": LABELS[read],
                    "bytes": payload,
                    "seconds": statistics.median(r["seconds"] for r in runs),
                    "private_growth": int(statistics.median(r["private_growth"] for r in runs)),
                }
            )
        local = results[0]["seconds"]
        for row in results:
            row["ratio"] = row["seconds"] / local if local else None
        scope = VineyardReference.from_json(ref)  # purge deletes only the row's own scope
        row = {k: getattr(scope, k) for k in ("key", "dag_id", "run_id", "task_id", "map_index")}
        VineyardXComBackend.purge(type("Row", (), {"value": ref, **row})())  # the original and its copies
        return results
    finally:
        if saved is None:
            os.environ.pop("AIRFLOW__FLUID__VINEYARD_SOCKET", None)
        else:
            os.environ["AIRFLOW__FLUID__VINEYARD_SOCKET"] = saved
        cluster.stop(timeout=5)


def cluster_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown section of :func:`run_cluster_level`'s results (empty when there are none)."""
    if not results:
        return []
    size = results[0]["bytes"] / MiB
    lines = [
        "## Cross-instance hand-off (local Vineyard cluster)",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        f"Numeric DataFrame of {size:.0f} MiB; read + scan in a fresh process, median seconds:",
        "",
        "| read | seconds | ÷ local zero-copy | consumer private memory growth |",
        "|---|---|---|---|",
    ]
    for r in results:
        growth = f"{r['private_growth'] / MiB:.1f} MiB ({100 * r['private_growth'] / r['bytes']:.1f}%)"
        lines.append(f"| {r['label']} | {r['seconds']:.3f} | {r['ratio']:.1f}x | {growth} |")
    return [*lines, ""]


if __name__ == "__main__":
    _read(*sys.argv[1:5])
