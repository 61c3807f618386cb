#!/usr/bin/env python
"""Summarise one DAG run from Airflow's metadata DB: state, metrics and every XCom hand-off.

Reads the rows the Vineyard XCom backend wrote (a small JSON reference per value) and the values
that stayed inline, straight from Airflow's ORM, so it needs no vineyardd. Uses the Airflow home
of the environment (``AIRFLOW_HOME``), like the ``airflow`` CLI.

    python scripts/show_handoffs.py [DAG_ID] [--run-id RUN_ID] [--metrics-task report]

Exit status: 0 when the run succeeded and every XCom row is under ``--max-row-bytes``, else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

DEFAULT_DAG_ID = "flights_delay_regression"
MAX_ROW_BYTES = 2048  # rows holding references must stay small: Airflow's DB is not a data store


def _ref_marker() -> str:
    try:
        from fluid_airflow.vineyard.data.reference import MARKER
    except ImportError:  # keep the script usable with a checkout that lacks the backend
        return "__vineyard_ref__"
    return MARKER


# fluid_airflow.vineyard.data.inline.MARKER, spelled out like the reference marker's fallback above.
INLINE_MARKER = "__vineyard_inline__"


def _fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _fmt_shape(shape: Any) -> str:
    if not shape:
        return "-"
    return " x ".join(str(s) for s in shape)


def _refs_in(value: Any, marker: str) -> list[dict[str, Any]]:
    """Every Vineyard reference inside a DB value, at any depth (containers such as the
    ``multiple_outputs`` return_value dict are stored as a JSON tree of references)."""
    if isinstance(value, dict):
        if marker in value:
            return [value]
        return [r for v in value.values() for r in _refs_in(v, marker)]
    if isinstance(value, list):
        return [r for v in value for r in _refs_in(v, marker)]
    return []


def _is_ref(value: Any, marker: str) -> bool:
    return isinstance(value, dict) and marker in value


def _container_type(value: Any) -> str:
    """``dict``/``list``/``tuple`` of a reference tree (``{"<marker>": 1, "value": {"dict": ...}}``)."""
    node = value.get("value") if isinstance(value, dict) else None
    if isinstance(node, dict) and len(node) == 1:
        return next(iter(node))
    return type(value).__name__


def _inline_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _row_json(value: Any) -> str:
    """The JSON text of a DB value (the column holds JSON; older rows may hold a JSON string)."""
    return value if isinstance(value, str) else json.dumps(value)


def _decoded(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _table(rows: list[list[str]], header: list[str], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def summarize(dag_id: str, run_id: str | None, metrics_tasks: list[str], max_row_bytes: int) -> int:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    marker = _ref_marker()
    with create_session() as session:
        query = select(DagRun).where(DagRun.dag_id == dag_id)
        if run_id:
            query = query.where(DagRun.run_id == run_id)
        run = session.scalars(query.order_by(DagRun.id.desc()).limit(1)).first()
        if run is None:
            which = f"run {run_id!r}" if run_id else "any run"
            print(f"error: no DAG run found for dag_id={dag_id!r} ({which}) in this AIRFLOW_HOME's DB")
            return 1

        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
        ).all()
        xcoms = session.scalars(select(XComModel).where(XComModel.dag_run_id == run.id)).all()

        state = str(getattr(run.state, "value", run.state))
        duration = (
            f"{(run.end_date - run.start_date).total_seconds():.1f} s"
            if run.start_date and run.end_date
            else "not finished"
        )
        ti_states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in tis}
        order = {ti.task_id: (ti.start_date is None, ti.start_date, ti.task_id) for ti in tis}

        print(f"DAG run   {dag_id} / {run.run_id}")
        print(f"state     {state} (run took {duration})")
        timed = sorted((ti for ti in tis if ti.duration is not None), key=lambda ti: order[ti.task_id])
        if timed:
            # One "task N s" item per entry; wrap between items only.
            items = [f"{ti.task_id}\0{ti.duration:.1f}\0s" for ti in timed]
            text = textwrap.fill(
                ", ".join(items), width=100, initial_indent="task time ", subsequent_indent=" " * 10
            )
            print(text.replace("\0", " "))
        failed = sorted(t for t, s in ti_states.items() if s not in ("success", "skipped"))
        if failed:
            print("tasks not successful: " + ", ".join(f"{t}={ti_states[t]}" for t in failed))

        by_task = {(x.task_id, x.key): _decoded(x.value) for x in xcoms}
        metrics = None
        for task_id in metrics_tasks:
            value = by_task.get((task_id, "return_value"))
            if isinstance(value, dict) and marker not in value:
                metrics = (task_id, value)
                break
        print()
        if metrics:
            print(f"Metrics (inline XCom of task {metrics[0]!r}):")
            for k, v in metrics[1].items():
                print(f"  {k:<14} {v:,}" if isinstance(v, int) else f"  {k:<14} {v}")
        else:
            print(f"Metrics: none found (no inline dict returned by {', '.join(metrics_tasks)})")

        # Count each Vineyard object once: a multiple_outputs task's return_value tree points at
        # the same objects as its per-key XComs, which own them.
        owned = {_decoded(x.value).get("object_id") for x in xcoms if _is_ref(_decoded(x.value), marker)}
        rows, seen, total, largest = [], set(), 0, (0, "")
        handoffs = [x for x in xcoms if not x.key.startswith("_link_")]  # operator extra links, not data
        for x in sorted(
            handoffs, key=lambda x: (order.get(x.task_id, (True, None, x.task_id)), x.map_index, x.key)
        ):
            value = _decoded(x.value)
            size = len(_row_json(x.value).encode())
            refs = _refs_in(value, marker)
            # Rows holding references must stay small; inline rows are bounded by the inline
            # floors ([fluid] inline_threshold, inline_payload_floor) instead.
            if refs and size > largest[0]:
                largest = (size, f"{x.task_id}/{x.key}")
            new = [r for r in refs if r.get("object_id") not in seen]
            seen.update(r.get("object_id") for r in refs)
            total += sum(r.get("bytes") or 0 for r in new)
            if _is_ref(value, marker):
                nbytes = value.get("bytes")
                cells = [value.get("type", "?"), _fmt_shape(value.get("shape")), _fmt_int(nbytes), "vineyard"]
            elif refs:  # a container whose leaves are references
                nbytes = sum(r.get("bytes") or 0 for r in refs)
                where = "vineyard" if any(r.get("object_id") not in owned for r in refs) else "shared"
                cells = [f"{_container_type(value)} of refs", f"{len(refs)} refs", _fmt_int(nbytes), where]
            elif isinstance(value, dict) and INLINE_MARKER in value:  # a small array/frame kept in the row
                cells = [
                    value.get("type", "?"),
                    _fmt_shape(value.get("shape")),
                    _fmt_int(value.get("bytes")),
                    "inline",
                ]
            else:
                shape = [len(value)] if isinstance(value, (list, dict, str)) else None
                cells = [_inline_type(value), _fmt_shape(shape), _fmt_int(size), "inline"]
            rows.append([x.task_id, x.key, str(x.map_index), *cells, _fmt_int(size)])

    print()
    print(f"Hand-offs ({len(rows)} XComs; bytes = payload size, db row = JSON kept in Airflow's DB):")
    print("  (shared = a container of references to objects listed under their own keys)")
    header = ["task", "key", "map", "type", "shape", "bytes", "where", "db row"]
    for line in _table(rows, header, right={2, 5, 7}):
        print("  " + line)
    print()
    print(f"Total in Vineyard: {_fmt_int(total)} bytes ({total / 2**20:,.1f} MiB) in {len(seen)} objects")
    ok_size = largest[0] < max_row_bytes
    print(
        f"Largest reference row in Airflow's DB: {largest[0]:,} bytes ({largest[1]}), "
        f"limit {max_row_bytes:,}: {'OK' if ok_size else 'TOO LARGE'}"
    )
    if state != "success":
        print(f"DAG run did not succeed (state {state})")
    return 0 if state == "success" and ok_size else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dag_id", nargs="?", default=DEFAULT_DAG_ID, help=f"default {DEFAULT_DAG_ID}")
    parser.add_argument("--run-id", help="a DAG run id; default the latest run of the DAG")
    parser.add_argument(
        "--metrics-task",
        action="append",
        help="task whose inline dict return value holds the metrics (repeatable; default report, evaluate)",
    )
    parser.add_argument("--max-row-bytes", type=int, default=MAX_ROW_BYTES)
    args = parser.parse_args(argv)
    return summarize(
        args.dag_id, args.run_id, args.metrics_task or ["report", "evaluate"], args.max_row_bytes
    )


if __name__ == "__main__":
    sys.exit(main())
