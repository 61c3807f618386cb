"""What the XCom backend holds in Vineyard, per DAG run: for the Airflow UI page and its API.

Joins two sources and never loads a payload: the backend's names in vineyardd (``list_names`` and
``get_meta``, cluster-wide with etcd metadata) and the references in Airflow's XCom rows. Each
object gets a state:

- ``live``: its name and object exist;
- ``lost``: an XCom row refers to it but vineyardd no longer has it although the run's retention
  has not passed (a vineyardd restart, a manual delete), or its name is left dangling;
- ``released``: gone, and the run is finished and either none of its names remain in
  vineyardd (a release drops them: run end, the release action, ``gc``) or it is past
  ``[fluid] keep_for``. Vineyard keeps no record of why an object went, so a restart of a
  ``--meta local`` vineyardd after the run ended also reads as released;
- ``orphan``: in vineyardd under the backend's prefix, but no XCom row refers to it (what
  ``fluid-airflow gc`` reclaims once the run is finished).

Ages are seconds since the reference's ``created`` time (UTC).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fluid_airflow import config
from fluid_airflow.vineyard.client.calls import LIST_LIMIT, connected_instance
from fluid_airflow.vineyard.data.naming import names_pattern, split_copy_name, split_xcom_object_name
from fluid_airflow.vineyard.data.reference import VineyardReference
from fluid_airflow.vineyard.data.tree import referenced_ids, references_in
from fluid_airflow.vineyard.lifecycle.metadb import FINISHED_RUN_STATES, recent_runs_with_xcom_values
from fluid_airflow.vineyard.lifecycle.migration import held_bytes

if TYPE_CHECKING:
    from vineyard import Client

RECENT_RUNS = 50  # finished runs listed even when nothing of them is held any more


@dataclass
class HeldObject:
    """One object (or migrated copy) of a run; ``bytes`` of shared memory, ``age`` in seconds."""

    name: str
    object_id: str
    task_id: str
    map_index: int
    key: str
    type: str = ""
    shape: list[int] | None = None
    bytes: int = 0
    host: str = ""
    instance_id: int | None = None
    age: float | None = None
    state: str = "live"
    copy_of: str = ""


@dataclass
class RunHoldings:
    """A DAG run's objects; ``bytes`` counts the live ones."""

    dag_id: str
    run_id: str
    run_state: str = "unknown"
    objects: list[HeldObject] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.objects if o.state in ("live", "orphan"))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes": self.bytes}


def _age(created: str, now: datetime) -> float | None:
    try:
        return round((now - datetime.fromisoformat(created)).total_seconds(), 1)
    except (TypeError, ValueError):
        return None


def _meta_age(meta: Any, now: datetime) -> float | None:
    """Age from Vineyard's own creation time (``__timestamp``, milliseconds since the epoch)."""
    try:
        return round(now.timestamp() - int(meta["__timestamp"]) / 1000, 1)
    except Exception:  # not every object type carries it
        return None


def _rows(
    dag_ids: set[str] | None,
) -> tuple[dict[tuple[str, str], tuple[str, Any]], list[tuple[str, str, Any]]]:
    """``(state, end_date)`` per run and ``(dag_id, run_id, value)`` of XCom rows holding references,
    recent runs first."""
    runs, rows = recent_runs_with_xcom_values(dag_ids, limit=10 * RECENT_RUNS)
    return runs, [(d, r, v) for d, r, v in rows if referenced_ids(v) and (d, r) in runs]


def _refs(value: Any) -> list[VineyardReference]:
    if isinstance(value, str):
        import json

        value = json.loads(value)
    return [VineyardReference.from_json(r) for r in references_in(value)]


def collect(client: Client, dag_ids: set[str] | None = None) -> list[RunHoldings]:
    """The backend's objects per DAG run, most recent runs first.

    :param dag_ids: only these DAGs (the DAGs the user may read); None: all.
    """
    now = datetime.now(timezone.utc)
    runs_state, rows = _rows(dag_ids)
    holdings: dict[tuple[str, str], RunHoldings] = {}

    def run(dag_id: str, run_id: str) -> RunHoldings:
        key = (dag_id, run_id)
        if key not in holdings:
            holdings[key] = RunHoldings(dag_id, run_id, runs_state.get(key, ("deleted", None))[0])
        return holdings[key]

    referenced: dict[str, VineyardReference] = {}
    for dag_id, run_id, value in rows:
        for ref in _refs(value):
            referenced[ref.object_id] = ref
            run(dag_id, run_id)
    seen, named_runs = _add_named(client, dag_ids, referenced, run, now)
    for (dag_id, run_id), holding in holdings.items():
        end = runs_state.get((dag_id, run_id), ("", None))[1]
        no_names = not holding.objects and (dag_id, run_id) not in named_runs
        released = _released(holding.run_state, end, no_names, now)
        values = [value for d, r, value in rows if (d, r) == (dag_id, run_id)]
        _add_unnamed(holding, values, seen, released, now)
    order = {key: i for i, key in enumerate(runs_state)}
    return sorted(holdings.values(), key=lambda h: order.get((h.dag_id, h.run_id), -1))


def _add_named(
    client: Client,
    dag_ids: set[str] | None,
    referenced: dict[str, VineyardReference],
    run: Callable[[str, str], RunHoldings],
    now: datetime,
) -> tuple[set[str], set[tuple[str, str]]]:
    """Add every object the backend's names reach to its run (``live``, or ``orphan`` when no XCom
    row refers to it).

    :returns: the ids of named originals (not copies), and the runs with any name left, dangling
        ones included.
    """
    import vineyard

    seen: set[str] = set()
    named_runs: set[tuple[str, str]] = set()
    pattern = names_pattern(prefix=config.get("name_prefix"))
    for name, object_id in sorted(client.list_names(pattern, limit=LIST_LIMIT).items()):
        copy = split_copy_name(name)
        try:
            parts = split_xcom_object_name(copy[0] if copy else name)
        except ValueError:
            continue
        if dag_ids is not None and parts["dag_id"] not in dag_ids:
            continue
        named_runs.add((str(parts["dag_id"]), str(parts["run_id"])))
        try:
            meta = client.get_meta(object_id)
        except vineyard.ObjectNotExistsException:
            continue  # a dangling name: shown through its XCom row, if any
        original = referenced.get(copy[1] if copy else repr(object_id))
        held = HeldObject(
            name=name,
            object_id=repr(object_id),
            task_id=str(parts["task_id"]),
            map_index=int(parts["map_index"]),
            key=str(parts["key"]),
            type=original.type if original else str(meta.typename),
            shape=original.shape if original else None,
            bytes=held_bytes(meta),
            instance_id=int(meta.instance_id),
            host=str(client.meta.get(int(meta.instance_id), {}).get("hostname", "")),
            age=_age(original.created, now) if original and original.created else _meta_age(meta, now),
            state="live" if original else "orphan",
            copy_of=copy[1] if copy else "",
        )
        if not copy:
            seen.add(repr(object_id))
        run(str(parts["dag_id"]), str(parts["run_id"])).objects.append(held)
    return seen, named_runs


def _released(run_state: str, end: Any, no_names: bool, now: datetime) -> bool:
    """A missing object of this run was released (not lost): the run is finished and either past
    its retention or without any name left."""
    keep = config.retention(run_state)
    expired = keep >= 0 and end is not None and (now - end).total_seconds() >= keep
    return run_state in FINISHED_RUN_STATES and (expired or no_names)


def _add_unnamed(
    holding: RunHoldings, values: list[Any], seen: set[str], released: bool, now: datetime
) -> None:
    """Add the objects the run's XCom ``values`` refer to that no name reached (released or lost)."""
    for value in values:
        for ref in _refs(value):
            if ref.object_id in seen:
                continue
            holding.objects.append(
                HeldObject(
                    name=ref.name, object_id=ref.object_id, task_id=ref.task_id, map_index=ref.map_index,
                    key=ref.key, type=ref.type, shape=ref.shape, bytes=ref.bytes, host=ref.host,
                    instance_id=ref.instance_id, age=_age(ref.created, now),
                    state="released" if released else "lost",
                )
            )  # fmt: skip


def instances(client: Client) -> list[dict[str, Any]]:
    """Each vineyardd of the client's cluster: id, host, RPC endpoint, and used/limit bytes when
    it can be asked (the connected one; others over IPC when their socket is on this host, or over
    their RPC endpoint when ``client`` itself is an RPC client, e.g. of a Fluid Dataset)."""
    from pathlib import Path

    from fluid_airflow.hooks.vineyard import VineyardHook

    own = connected_instance(client)
    out = []
    for instance_id, entry in sorted(client.meta.items()):
        row: dict[str, Any] = {
            "instance_id": int(instance_id),
            "host": str(entry.get("hostname", "")),
            "ipc_socket": str(entry.get("ipc_socket", "")),
            # vineyardd started with --norpc advertises 0.0.0.0:0
            "rpc_endpoint": "off"
            if str(entry.get("rpc_endpoint", "")).endswith(":0")
            else str(entry.get("rpc_endpoint", "")),
            "memory_usage": None,
            "memory_limit": None,
            "unnamed_bytes": None,
            "puts_in_flight": None,
        }
        try:
            other = client
            if int(instance_id) != own:
                if client.is_ipc and Path(row["ipc_socket"]).exists():
                    other = VineyardHook(ipc_socket=row["ipc_socket"]).get_conn()
                elif not client.is_ipc and row["rpc_endpoint"] != "off":
                    timeout = float(client.timeout_seconds)
                    other = VineyardHook(rpc_endpoint=row["rpc_endpoint"], timeout=timeout).get_conn()
                else:
                    out.append(row)
                    continue
            if connected_instance(other) == int(instance_id):
                status = other.status
                row.update(memory_usage=int(status.memory_usage), memory_limit=int(status.memory_limit))
                row.update(_unnamed(other, int(status.memory_usage)))
        except Exception:  # a stale record of a restarted instance: no numbers
            pass
        out.append(row)
    return out


def _unnamed(client: Client, used: int) -> dict[str, int]:
    """Bytes no name reaches in ``client``'s vineyardd, and puts in flight there.

    ``used`` minus the bytes of every blob a name reaches: this counts unsealed blobs too, which
    no listing shows (a killed producer's, or a put writing right now).
    """
    from fluid_airflow.vineyard.lifecycle.journal import journal_dir, journals
    from fluid_airflow.vineyard.lifecycle.reclaim import reachable_bytes

    now = time.time()
    folder = journal_dir(client)
    live = [j for j in journals(folder) if j.alive(now)] if folder is not None else []
    return {"unnamed_bytes": max(used - reachable_bytes(client), 0), "puts_in_flight": len(live)}
