"""XCom values that are containers (dict, list, tuple) holding arrays, DataFrames or Arrow data.

A task returning ``{"X": ndarray, "y": ndarray}`` (with or without ``multiple_outputs``) or a
tuple of DataFrames must work like returning one array. Each Vineyard-type leaf becomes its
own object (or stays inline when small, :mod:`.inline`); the container becomes a tagged JSON
tree stored in the DB row, led by a one-line ``summary`` for the Airflow UI's XCom view::

    {"summary": "dict of 2: X numpy.ndarray float64 1000 x 20, 156.25 KiB in Vineyard; n=3",
     "__vineyard_tree__": 1, "value": {"dict": {"X": {"ref": {...}}, "n": {"value": 3}}}}

Tags: ``ref`` (a compact :class:`VineyardReference`), ``inline`` (an :mod:`.inline` row),
``dict`` (str keys only), ``list``, ``tuple``, ``value`` (anything else, in Airflow's serde
form). One tag per node keeps the tree unambiguous whatever keys a user's dict has. Rows
written before ``summary`` existed have none and read the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeGuard

# Module import, not names: Airflow may load this module while fluid_airflow.exceptions is
# still initialising (it imports airflow, whose config loads the XCom backend).
from fluid_airflow import exceptions as errors
from fluid_airflow.vineyard.data import codec, inline
from fluid_airflow.vineyard.data.reference import VineyardReference, is_reference

TREE_MARKER = "__vineyard_tree__"
MAX_DEPTH = 16
MAX_SUMMARY = 200  # characters of a tree row's summary: one line in the UI
_MAX_PLAIN = 24  # characters shown of a plain leaf's JSON in a summary


def is_tree(value: object) -> TypeGuard[dict[str, Any]]:
    """True for the DB form produced by :func:`to_tree`."""
    return isinstance(value, dict) and TREE_MARKER in value


def is_backend_row(value: object) -> bool:
    """True for every DB form this backend writes itself: a reference, an inline value or a tree.

    Such a value is already what the DB row should hold: it is stored again as is, kept as is
    within ``references_only``, and passed unchanged through Airflow's serde by ``@task.fluid``.
    """
    return is_reference(value) or inline.is_inline(value) or is_tree(value)


def contains_vineyard(value: object, depth: int = 0) -> bool:
    """True when a dict/list/tuple holds a Vineyard-type value at any depth up to :data:`MAX_DEPTH`."""
    if depth > MAX_DEPTH:
        return False
    if depth > 0 and is_reference(value):
        return True  # a reference made elsewhere (a pod, another key), kept as a leaf
    if isinstance(value, dict):
        return any(contains_vineyard(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_vineyard(v, depth + 1) for v in value)
    return codec.is_vineyard_type(value)


def to_tree(
    value: Any, store: Callable[[Any, list[str]], dict[str, Any]], plain: Callable[[Any], Any]
) -> dict[str, Any]:
    """Return the DB form of a container; ``store(leaf, path)`` stores one leaf and returns its
    node (``{"ref": compact reference}`` or ``{"inline": row}``), ``plain(v)`` serialises any
    other leaf (Airflow serde).

    :raises UnsupportedXComValueError: a dict key is not a str.
    """

    def node(v: Any, path: list[str]) -> dict[str, Any]:
        if codec.is_vineyard_type(v):
            return store(v, path)
        if inline.is_inline(v):  # kept inline by an earlier push (e.g. another key)
            return {"inline": v}
        if is_reference(v):  # already stored (by a task pod, or under another XCom key)
            return {"ref": VineyardReference.from_json(v).to_json(compact=True)}
        if isinstance(v, dict):
            bad = [k for k in v if not isinstance(k, str)]
            if bad:
                raise errors.UnsupportedXComValueError(
                    f"dict key {bad[0]!r} at {'.'.join(path) or 'top level'} is a {type(bad[0]).__name__}: a "
                    "dict holding arrays or DataFrames needs str keys. Convert the keys with str()."
                )
            return {"dict": {k: node(x, [*path, k]) for k, x in v.items()}}
        if isinstance(v, (list, tuple)):
            tag = "list" if isinstance(v, list) else "tuple"
            return {tag: [node(x, [*path, str(i)]) for i, x in enumerate(v)]}
        return {"value": plain(v)}

    root = node(value, [])
    return {"summary": summarize(root), TREE_MARKER: 1, "value": root}


def from_tree(
    tree: dict[str, Any], resolve: Callable[[dict[str, Any]], Any], plain: Callable[[Any], Any]
) -> Any:
    """Rebuild the container; ``resolve(ref)`` fetches a leaf, ``plain(v)`` deserialises others."""

    def build(n: dict[str, Any]) -> Any:
        if "ref" in n:
            return resolve(n["ref"])
        if "inline" in n:
            return inline.decode(n["inline"])
        if "dict" in n:
            return {k: build(x) for k, x in n["dict"].items()}
        if "list" in n:
            return [build(x) for x in n["list"]]
        if "tuple" in n:
            return tuple(build(x) for x in n["tuple"])
        return plain(n["value"])

    return build(tree["value"])


def references_in(value: object) -> list[dict[str, Any]]:
    """The references a backend row's (parsed) value holds: itself when it is a reference, a
    tree's compact references depth first, else none.

    The one reading of "which objects does this row refer to" (purge, gc, the handoffs page,
    locations, ``@task.fluid``); callers differ only in how they parse JSON text and what they
    recurse into around it.
    """
    if is_reference(value):
        return [value]
    if is_tree(value):
        return tree_refs(value)
    return []


def referenced_ids(value: Any) -> set[str]:
    """Object ids (short form, ``o…``) that one XCom row's value refers to."""
    if isinstance(value, str) and value.startswith("{"):  # a DB that hands back the JSON text
        try:
            value = json.loads(value)
        except ValueError:
            return set()
    return {str(ref.get("object_id")) for ref in references_in(value)}


def tree_refs(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Every compact reference in a tree, depth first."""
    found: list[dict[str, Any]] = []

    def walk(n: dict[str, Any]) -> None:
        if "ref" in n:
            found.append(n["ref"])
        for child in n.get("dict", {}).values():
            walk(child)
        for child in n.get("list", n.get("tuple", [])):
            walk(child)

    walk(tree["value"])
    return found


def summarize(root: dict[str, Any]) -> str:
    """One line about a tree's top node, at most :data:`MAX_SUMMARY` characters, e.g.
    ``dict of 3: X numpy.ndarray float64 1000 x 20, 156.25 KiB in Vineyard; y ...; n=3``."""
    if "dict" in root:
        parts = [f"{k}{'=' if 'value' in v else ' '}{_leaf(v)}" for k, v in root["dict"].items()]
        text = f"dict of {len(parts)}: {'; '.join(parts)}"
    elif "list" in root or "tuple" in root:
        kind = "list" if "list" in root else "tuple"
        items = root[kind]
        text = f"{kind} of {len(items)}: {'; '.join(_leaf(v) for v in items)}"
    else:
        text = _leaf(root)
    text = " ".join(text.splitlines())  # dict keys may hold line breaks: the UI shows one line
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "\u2026"


def _leaf(n: dict[str, Any]) -> str:
    """A node in a few words: what a reference or inline value is, a container's size, a plain
    value's JSON (cut)."""
    if "ref" in n:
        ref = n["ref"]
        dtype = ref.get("dtype")
        if dtype and ref.get("type") == "numpy.ndarray":  # "<f8" -> "float64", as inline summaries say
            import numpy as np

            dtype = np.dtype(dtype).name
        size = int(ref.get("bytes", 0))
        return inline.describe(str(ref.get("type")), ref.get("shape") or [], dtype, size, "in Vineyard")
    if "inline" in n:
        return str(n["inline"].get("summary", "inline"))
    for kind in ("dict", "list", "tuple"):
        if kind in n:
            return f"{kind} of {len(n[kind])}"
    text = json.dumps(n.get("value"))
    return text if len(text) <= _MAX_PLAIN else text[: _MAX_PLAIN - 1] + "\u2026"
