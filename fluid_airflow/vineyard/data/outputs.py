"""Reuse of a ``multiple_outputs`` task's per-key XCom objects in its ``return_value`` push.

Airflow pushes each key of a ``multiple_outputs`` dict, then the whole dict as ``return_value``;
without this, every array of the dict would be stored twice.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from airflow.sdk.bases.xcom import BaseXCom

from fluid_airflow.vineyard.data.naming import XComScope

# Airflow's own per-key pushes of a ``multiple_outputs`` task, so that the whole-dict
# ``return_value`` push that follows them in the same call reuses those objects instead of
# storing every array twice. ``call`` identifies that call (see :func:`airflow_outputs_call`).
_pushed: dict[str, Any] = {"scope": None, "call": None, "order": []}


def airflow_outputs_call() -> int | None:
    """Identity of the running ``_push_xcom_if_needed`` call when Airflow is pushing the values of
    a ``multiple_outputs`` task, else None (e.g. a push made by task code with ``ti.xcom_push``).

    Airflow makes those pushes from that one function, back to back: each key, then the whole
    dict as ``return_value``, with no task code in between (``_push_xcom_if_needed`` in
    ``airflow/sdk/execution_time/task_runner.py``, task-sdk 1.3.2). Within one such call the
    values cannot have changed, so reusing the per-key objects is safe; anywhere else a value
    may have been changed in place since it was pushed, and is stored again. If a later Airflow
    renames the function, this returns None and values are stored twice: slower, never wrong.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if (
            frame.f_code.co_name == "_push_xcom_if_needed"
            and frame.f_globals.get("__name__") == "airflow.sdk.execution_time.task_runner"
        ):
            task = getattr(frame.f_locals.get("ti"), "task", None)
            return id(frame) if getattr(task, "multiple_outputs", False) is True else None
        frame = frame.f_back
    return None


def remember(scope: XComScope, value: Any, ref: dict[str, Any] | None) -> None:
    """Record a per-key push that Airflow made for ``multiple_outputs`` (others are not reused)."""
    call = airflow_outputs_call()
    current = scope.task_instance
    if call is None:
        return
    if _pushed["scope"] != current or _pushed["call"] != call:
        _pushed.update(scope=current, call=call, order=[])
    _pushed["order"].append((scope.key, value, ref))


def multiple_outputs_pushes(value: Any, scope: XComScope) -> dict[str, Any]:
    """The per-key pushes to reuse for this ``return_value`` dict, or {}.

    Reused only when Airflow itself made those pushes for a ``multiple_outputs`` task in the
    same call that now pushes the dict (:func:`airflow_outputs_call`), each key of this very
    dict, in order, with these very objects.
    """
    current = scope.task_instance
    if scope.key != BaseXCom.XCOM_RETURN_KEY or not isinstance(value, dict) or _pushed["scope"] != current:
        return {}
    call = airflow_outputs_call()
    if call is None or call != _pushed["call"]:
        return {}
    recent = _pushed["order"][-len(value) :] if value else []
    if [k for k, _, _ in recent] != list(value) or any(value[k] is not v for k, v, _ in recent):
        return {}
    return {k: (v, ref) for k, v, ref in recent if ref is not None}


def forget() -> None:
    """Drop the recorded pushes: the ``return_value`` push is the last one of a task instance."""
    _pushed.update(scope=None, call=None, order=[])
