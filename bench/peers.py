"""The backends compared: ours, Airflow's own XCom backends, and hand-rolled files.

Every peer hands a value from a producer process to a consumer process the way an Airflow
XCom does: ``put`` stores the value and writes the JSON that Airflow's DB would keep into one
row of a SQLite table (:class:`RowStore`, a stand-in for Airflow's ``xcom`` table); ``get`` reads
that row and turns it back into the value; ``purge`` deletes both. For the XCom backends these
are their own ``serialize_value`` / ``deserialize_value`` / ``purge``, called as Airflow's task
runner calls them. Nothing is fsynced by any peer (files and rows stay in the page cache).

The peers hold only plain settings, so they can be handed to worker processes; everything they
import is imported inside the methods.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sqlite3
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DAG_ID = "fluid_bench"
TASK_ID = "produce"
KEY = "return_value"

# What Airflow's task runner hands deserialize_value / purge: an XCom row. purge deletes only
# objects of the row's own scope (dag, run, task, map index, key), so the row carries them.
_XComRow = namedtuple("_XComRow", ["key", "value", "dag_id", "run_id", "task_id", "map_index"])


def _Row(key: str, value: Any, run_id: str | None = None) -> Any:
    return _XComRow(key, value, DAG_ID, run_id, TASK_ID, -1)


class RowStore:
    """One SQLite row per hand-off holding the JSON Airflow's DB would keep (its ``xcom`` table).

    SQLite, as in a default Airflow install; ``synchronous=OFF`` because no other peer fsyncs
    either. SQLite refuses a value longer than 1,000,000,000 bytes (its ``SQLITE_MAX_LENGTH``).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("CREATE TABLE IF NOT EXISTS xcom (case_id TEXT PRIMARY KEY, value TEXT NOT NULL)")
        return conn

    def write(self, case_id: str, text: str) -> None:
        """Store ``text`` (JSON) as the row of ``case_id``, replacing any earlier one."""
        with self._connect() as conn:
            conn.execute("INSERT OR REPLACE INTO xcom VALUES (?, ?)", (case_id, text))
        conn.close()

    def read(self, case_id: str) -> str:
        """The JSON text of ``case_id``'s row. :raises KeyError: no such row."""
        conn = self._connect()
        try:
            row = conn.execute("SELECT value FROM xcom WHERE case_id = ?", (case_id,)).fetchone()
        finally:
            conn.close()
        if row is None:
            raise KeyError(case_id)
        return row[0]

    def delete(self, case_id: str) -> None:
        """Remove ``case_id``'s row if there is one."""
        with self._connect() as conn:
            conn.execute("DELETE FROM xcom WHERE case_id = ?", (case_id,))
        conn.close()


@dataclass(frozen=True)
class Peer:
    """A way to hand a value from one process to another. Subclasses implement the three steps.

    :param name: short id used in results (``vineyard``, ``objectstore-disk``, ...).
    :param label: what it is, for the report.
    :param storage: where the bytes live between producer and consumer.
    :param env: environment variables the peer needs, set in each worker before it is used.
    """

    name: str
    label: str
    storage: str
    env: dict[str, str] = field(default_factory=dict)

    def activate(self) -> None:
        """Apply :attr:`env`; called first in every forked worker, before the peer is used."""
        os.environ.update(self.env)

    def put(self, value: Any, case_id: str, rows: RowStore) -> int:
        """Store ``value`` and its DB row; returns the row's size in bytes."""
        raise NotImplementedError

    def get(self, case_id: str, rows: RowStore) -> Any:
        """Read the row of ``case_id`` and return the value it stands for."""
        raise NotImplementedError

    def purge(self, case_id: str, rows: RowStore) -> None:
        """Delete what ``put`` stored, row included."""
        raise NotImplementedError

    def stored_bytes(self, case_id: str, rows: RowStore) -> int:
        """Bytes held between put and get besides the row (file size, shared memory)."""
        return 0

    def close(self) -> None:
        """Release per-process resources (connections) at the end of a worker."""


@dataclass(frozen=True)
class XComBackendPeer(Peer):
    """An Airflow XCom backend class, used through ``serialize_value``, ``deserialize_value``, ``purge``."""

    backend: str = ""  # "module.Class"

    def _cls(self) -> Any:
        module, _, name = self.backend.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def put(self, value: Any, case_id: str, rows: RowStore) -> int:
        ref = self._cls().serialize_value(
            value, key=KEY, task_id=TASK_ID, dag_id=DAG_ID, run_id=case_id, map_index=-1
        )
        text = json.dumps(ref)
        rows.write(case_id, text)
        return len(text.encode())

    def get(self, case_id: str, rows: RowStore) -> Any:
        return self._cls().deserialize_value(_Row(KEY, json.loads(rows.read(case_id))))

    def purge(self, case_id: str, rows: RowStore) -> None:
        try:
            stored = json.loads(rows.read(case_id))
        except KeyError:
            return
        self._cls().purge(_Row(KEY, stored, run_id=case_id))
        rows.delete(case_id)

    def stored_bytes(self, case_id: str, rows: RowStore) -> int:
        stored = json.loads(rows.read(case_id))
        if isinstance(stored, dict) and stored.get("__vineyard_ref__"):
            return int(stored.get("bytes") or 0)
        if isinstance(stored, str) and stored.startswith("file://"):
            return os.path.getsize(stored[len("file://") :])
        return 0

    def close(self) -> None:
        if self.name == "vineyard":
            from fluid_airflow import config
            from fluid_airflow.hooks.vineyard import close_clients

            close_clients(config.vineyard_socket())


@dataclass(frozen=True)
class PickleFilePeer(Peer):
    """``pickle.dump`` (protocol 5) to a file, ``pickle.load`` in the consumer."""

    folder: str = ""

    def _path(self, case_id: str) -> Path:
        return Path(self.folder) / f"{case_id}.pkl"

    def put(self, value: Any, case_id: str, rows: RowStore) -> int:
        path = self._path(case_id)
        with open(path, "wb") as f:
            pickle.dump(value, f, protocol=5)
        text = json.dumps(str(path))
        rows.write(case_id, text)
        return len(text)

    def get(self, case_id: str, rows: RowStore) -> Any:
        with open(json.loads(rows.read(case_id)), "rb") as f:
            return pickle.load(f)

    def purge(self, case_id: str, rows: RowStore) -> None:
        self._path(case_id).unlink(missing_ok=True)
        rows.delete(case_id)

    def stored_bytes(self, case_id: str, rows: RowStore) -> int:
        return self._path(case_id).stat().st_size


@dataclass(frozen=True)
class ArrowIpcPeer(Peer):
    """An uncompressed Arrow IPC file, memory-mapped by the consumer: the zero-copy reference.

    ndarrays are written as an Arrow Tensor (``pa.ipc.write_tensor``), DataFrames and Tables as
    an IPC file (Feather v2) of ``pa.Table.from_pandas(df)``; the consumer maps the file and
    gets a Tensor's ``to_numpy()``, the Table, or ``to_pandas(split_blocks=True)`` (no copy for
    numeric columns; string columns become Python objects).
    """

    folder: str = ""

    def _path(self, case_id: str) -> Path:
        return Path(self.folder) / f"{case_id}.arrow"

    def put(self, value: Any, case_id: str, rows: RowStore) -> int:
        import numpy as np
        import pyarrow as pa

        path = self._path(case_id)
        module = type(value).__module__.split(".")[0]
        if isinstance(value, np.ndarray) or module == "torch":
            array = value.numpy() if module == "torch" else value
            with pa.OSFile(str(path), "wb") as sink:
                pa.ipc.write_tensor(pa.Tensor.from_numpy(array), sink)
            form = "torch" if module == "torch" else "tensor"
        else:
            if module == "polars":
                table, form = value.to_arrow(), "polars"
            elif isinstance(value, pa.Table):
                table, form = value, "table"
            else:
                table, form = pa.Table.from_pandas(value), "pandas"
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        text = json.dumps({"path": str(path), "form": form})
        rows.write(case_id, text)
        return len(text)

    def get(self, case_id: str, rows: RowStore) -> Any:
        import pyarrow as pa

        ref = json.loads(rows.read(case_id))
        source = pa.memory_map(ref["path"])
        if ref["form"] in ("tensor", "torch"):
            array = pa.ipc.read_tensor(source).to_numpy()
            if ref["form"] == "torch":
                import torch

                return torch.from_numpy(array)
            return array
        table = pa.ipc.open_file(source).read_all()
        if ref["form"] == "polars":
            import polars as pl

            return pl.from_arrow(table, rechunk=False)
        return table.to_pandas(split_blocks=True) if ref["form"] == "pandas" else table

    def purge(self, case_id: str, rows: RowStore) -> None:
        self._path(case_id).unlink(missing_ok=True)
        rows.delete(case_id)

    def stored_bytes(self, case_id: str, rows: RowStore) -> int:
        return self._path(case_id).stat().st_size


OURS = "vineyard"
OBJECTSTORE_DISK = "objectstore-disk"
OBJECTSTORE = "common-io XComObjectStorageBackend"


def make_peers(disk_dir: Path, shm_dir: Path) -> list[Peer]:
    """The peers, ours first. ``disk_dir`` is on local disk, ``shm_dir`` on /dev/shm (tmpfs);
    both must exist and stay until the benchmark ends."""
    objectstore = "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
    threshold = {"AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "0"}  # every value to storage
    for sub in ("objectstore", "pickle", "arrow"):
        (shm_dir / sub).mkdir(parents=True, exist_ok=True)
    (disk_dir / "objectstore").mkdir(parents=True, exist_ok=True)
    return [
        XComBackendPeer(
            OURS,
            "fluid-airflow VineyardXComBackend",
            "vineyardd shared memory",
            backend="fluid_airflow.vineyard.xcom.VineyardXComBackend",
        ),
        XComBackendPeer(
            OBJECTSTORE_DISK,
            f"{OBJECTSTORE}, file:// on local disk",
            "file on local disk (page cache)",
            env={
                **threshold,
                "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{disk_dir}/objectstore",
            },
            backend=objectstore,
        ),
        XComBackendPeer(
            "objectstore-shm",
            f"{OBJECTSTORE}, file:// on /dev/shm",
            "file on /dev/shm (tmpfs)",
            env={**threshold, "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{shm_dir}/objectstore"},
            backend=objectstore,
        ),
        XComBackendPeer(
            "airflow-db",
            "Airflow default XCom (BaseXCom serde JSON in the DB row)",
            "the DB row (SQLite file on local disk)",
            backend="airflow.sdk.bases.xcom.BaseXCom",
        ),
        PickleFilePeer(
            "pickle-shm", "pickle protocol 5 file", "file on /dev/shm (tmpfs)", folder=str(shm_dir / "pickle")
        ),
        ArrowIpcPeer(
            "arrow-ipc-shm",
            "Arrow IPC file, memory-mapped (zero-copy reference)",
            "file on /dev/shm (tmpfs)",
            folder=str(shm_dir / "arrow"),
        ),
    ]
