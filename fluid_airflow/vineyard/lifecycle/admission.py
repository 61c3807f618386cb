"""Memory admission: refuse an XCom put that cannot fit in vineyardd, before anything is allocated.

Why check before the put: a value Vineyard stores as several blobs (a DataFrame: one per column
plus the index; an Arrow table: one per buffer) is allocated blob by blob, and when the store
runs out half-way, ``put`` raises ``NotEnoughMemoryException`` but **leaves the blobs already
written behind** as unnamed transient objects, which nothing frees short of ``client.clear()``
or a vineyardd restart (measured, vineyard 0.24.2: a 16-column DataFrame into a 64Mi store
holding 8 MiB left the whole remaining 56 MiB in use). Refusing the put up front keeps the
store as it was and lets the message say who holds the memory.

Measurements behind the margin (vineyard 0.24.2, ``--meta local``, 64Mi store, tested):

- vineyardd's limit is plain byte accounting: every blob counts its exact size (1, 7, 4097,
  65537 bytes all counted as such, no page or alignment rounding) and a blob is refused when
  ``memory_usage + size > memory_limit``. A put of *exactly* the free bytes succeeds: a single
  64 MiB array into an empty 64Mi store; the same after 6 x 8 MiB objects were stored; after
  every other one of them was deleted (holes), a 40 MiB array into 40 MiB free; and a DataFrame
  whose columns plus materialised index added up to exactly the free bytes. One byte more is
  refused in < 1 ms (``Failed to allocate memory of size ...``).
- So the allocator needs no slack; what the margin covers is the error of
  :func:`payload_nbytes` (small metadata-like blobs Vineyard adds: 436 bytes for a time zone
  column, 240 bytes for an Arrow dictionary column; string columns whose text is not what the
  estimate assumes). :data:`MARGIN_BYTES` plus :data:`MARGIN_FRACTION` of the estimate is
  required on top of it. Concurrent puts by other tasks can still take the room between the
  check and the put; the backend maps that ``NotEnoughMemoryException`` to the same error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

# Module import, not names: Airflow may load this module while fluid_airflow.exceptions is
# still initialising (it imports airflow, whose config loads the XCom backend).
from fluid_airflow import exceptions as errors
from fluid_airflow.units import format_bytes
from fluid_airflow.vineyard.client import arrow_stream
from fluid_airflow.vineyard.client.calls import LIST_LIMIT
from fluid_airflow.vineyard.data import naming

if TYPE_CHECKING:
    from vineyard import Client

MARGIN_BYTES = 64 * 1024  # fixed slack on top of the estimate (see the module docstring)
MARGIN_FRACTION = 0.01  # plus 1% of the estimate
TOP_HOLDERS = 5


class Holder(NamedTuple):
    """Shared memory held by the XCom objects of one DAG run."""

    dag_id: str
    run_id: str
    bytes: int
    objects: int


def payload_nbytes(payload: Any) -> int:
    """Estimate the bytes Vineyard will allocate to store ``payload`` (an ``Encoded.payload``).

    An estimate, exact for numeric data and Arrow data (checked against
    ``ObjectMeta.memory_usage`` on vineyard 0.24.2):

    - ndarray: ``nbytes``; a ``str`` (``<U``) array is stored as UTF-8 text plus 64-bit offsets,
      estimated as ``itemsize / 4`` bytes per element (its longest string, ASCII) plus 8.
    - Arrow Table / RecordBatch (also what pandas and polars frames are encoded as,
      :mod:`.frames`): the size of its IPC stream, exactly the blob it is stored in
      (:func:`fluid_airflow.vineyard.client.arrow_stream.stream_size`: counted by Arrow's writer
      on a mock sink, no copy, no per-cell work); an Array / ChunkedArray: its buffer sizes.
    - ``str`` / ``bytes``: their length in UTF-8.
    - anything else: 0 (not estimated; the put itself decides).
    """
    if isinstance(payload, str):
        return len(payload.encode("utf-8"))
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return len(payload)
    # MRO, not just the type: arrays read from Vineyard are vineyard.data.tensor.ndarray.
    modules = {c.__module__.split(".")[0] for c in type(payload).__mro__}
    if "numpy" in modules:
        return _ndarray_nbytes(payload)
    if "pyarrow" in modules:
        return _arrow_nbytes(payload)
    return 0


def _ndarray_nbytes(arr: Any) -> int:
    import numpy as np

    if not isinstance(arr, np.ndarray):
        return 0
    size = int(arr.size)
    if arr.dtype.kind == "U":
        return size * (arr.dtype.itemsize // 4) + 8 * (size + 1)
    return int(arr.nbytes)


def _arrow_nbytes(data: Any) -> int:
    import pyarrow as pa

    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if isinstance(data, pa.Table):
        return arrow_stream.stream_size(data)
    if isinstance(data, (pa.Array, pa.ChunkedArray)):
        return int(data.nbytes)
    return 0


def holders(client: Client, prefix: str) -> list[Holder]:
    """Shared memory held by the backend's named objects, by DAG run, largest first.

    Sums ``ObjectMeta.memory_usage`` of every object named ``<prefix>/<dag>/<run>/...`` in
    ``client``'s vineyardd; names whose object is gone and names of another layout are skipped,
    and an object with several names counts once.
    """
    import vineyard

    sizes: dict[tuple[str, str], list[int]] = {}
    seen: set[int] = set()
    pattern = naming.names_pattern(prefix=prefix)
    for name, object_id in client.list_names(pattern, limit=LIST_LIMIT).items():
        try:
            parts = naming.split_xcom_object_name(name)
        except ValueError:
            continue
        if parts["prefix"] != prefix or int(object_id) in seen:
            continue
        try:
            size = int(client.get_meta(object_id).memory_usage)
        except vineyard.ObjectNotExistsException:
            continue
        seen.add(int(object_id))
        entry = sizes.setdefault((str(parts["dag_id"]), str(parts["run_id"])), [0, 0])
        entry[0] += size
        entry[1] += 1
    found = [Holder(dag, run, size, count) for (dag, run), (size, count) in sizes.items()]
    return sorted(found, key=lambda h: (-h.bytes, h.dag_id, h.run_id))


def required_bytes(needed: int) -> int:
    """``needed`` plus the safety margin the admission check asks for."""
    return needed + MARGIN_BYTES + int(needed * MARGIN_FRACTION)


def check_room(
    client: Client,
    needed: int,
    *,
    what: str,
    scope: naming.XComScope,
    prefix: str | None = None,
    pending: Any = None,
    at_most: int = 0,
) -> None:
    """Refuse to store ``needed`` bytes unless vineyardd has them free (plus the margin).

    Called under the in-flight lock (:func:`~fluid_airflow.vineyard.lifecycle.inflight.tracked`). When the
    room is short, what no name reaches is reclaimed first (a killed producer's leftovers,
    :func:`~fluid_airflow.vineyard.lifecycle.reclaim.reclaim`), then the check is made again.

    :param needed: estimate of the bytes to store (:func:`payload_nbytes`); 0 is always admitted.
    :param what: the value's type for the message (``pandas.DataFrame``).
    :param scope: the XCom.
    :param prefix: the backend's name prefix; default ``[fluid] name_prefix``.
    :param pending: ``pending()`` gives the bytes other puts in flight announced but have not
        allocated yet; asked only when ``at_most`` (an upper bound of it) does not fit anyway.
    :raises VineyardOutOfMemoryError: naming the XCom, needed/free/limit bytes, the largest
        holders by DAG run and the fix. Nothing was allocated.
    """
    if needed <= 0:
        return
    waiting = 0
    for attempt in ("check", "after reclaiming"):
        status = client.status
        limit, used = int(status.memory_limit), int(status.memory_usage)
        if limit <= 0 or required_bytes(needed) <= limit - used - at_most:
            return  # fits even if every put in flight still needed all it announced
        waiting = pending() if pending is not None else 0
        if required_bytes(needed) <= limit - used - waiting:
            return
        if attempt == "check":
            from fluid_airflow import config
            from fluid_airflow.vineyard.lifecycle.reclaim import reclaim

            reclaim(client, unnamed=config.get_bool("reclaim_unnamed"), locked=True)
    raise out_of_memory(
        client, needed, what=what, scope=scope, prefix=prefix, status=(limit, used + waiting), pending=waiting
    )


def out_of_memory(
    client: Client,
    needed: int,
    *,
    what: str,
    scope: naming.XComScope,
    prefix: str | None = None,
    cause: BaseException | None = None,
    status: tuple[int, int] | None = None,
    pending: int = 0,
) -> errors.VineyardOutOfMemoryError:
    """The :class:`VineyardOutOfMemoryError` for an XCom that does not fit (to ``raise``).

    Used by :func:`check_room` and for a ``NotEnoughMemoryException`` from the put itself
    (``cause``: the estimate was low, or a concurrent put took the room). Never raises itself:
    when vineyardd cannot be queried the message just lacks those numbers.
    """
    if prefix is None:
        from fluid_airflow import config

        prefix = config.get("name_prefix")
    limit, used, top, cause_text = _measure(client, prefix, status)
    free = None if limit is None or used is None else max(limit - used, 0)
    xcom = scope.describe()
    where = _where(client)
    lines = [
        f"{xcom}: vineyardd{where} has no room for the {what}: it needs about {format_bytes(needed)} "
        f"({needed} bytes), {required_bytes(needed)} bytes with the estimate's safety margin; "
        f"{_amount(free)} are free of its {_amount(limit)} limit (--size)."
    ]
    if cause is not None:
        lines.append(
            f"vineyardd refused the put ({type(cause).__name__}: {str(cause)[-200:]}); what it had "
            "already written was deleted."
        )
    else:
        lines.append("Nothing was stored.")
    lines += _who_holds(top, prefix, limit, used, pending)
    lines.append(_fix(needed, limit, used) + cause_text)
    return errors.VineyardOutOfMemoryError(
        " ".join(lines), needed=needed, free=free, limit=limit, holders=top[:TOP_HOLDERS]
    )


def _measure(
    client: Client, prefix: str, status: tuple[int, int] | None
) -> tuple[int | None, int | None, list[Holder], str]:
    """``(limit, used, holders, cause_text)``; what could not be queried is None/empty and
    ``cause_text`` says why (the store is full, not necessarily broken: report what we have)."""
    limit = used = None
    top: list[Holder] = []
    try:
        if status is None:
            current = client.status
            status = (int(current.memory_limit), int(current.memory_usage))
        limit, used = status
        top = holders(client, prefix)
    except Exception as exc:
        return limit, used, top, f"; could not list holders: {type(exc).__name__}: {exc}"
    return limit, used, top, ""


def _who_holds(
    top: list[Holder], prefix: str, limit: int | None, used: int | None, pending: int
) -> list[str]:
    """Sentences on where the used bytes are: puts in flight, the largest runs, unnamed objects."""
    lines = []
    if pending:
        lines.append(
            f"{format_bytes(pending)} of the used bytes are announced by other puts in flight right now "
            "(concurrent tasks); retrying once they are done may succeed."
        )
    if top:
        shown = "; ".join(
            f"{h.dag_id} / {h.run_id}: {format_bytes(h.bytes)} in {h.objects} object(s)"
            for h in top[:TOP_HOLDERS]
        )
        more = f" (and {len(top) - TOP_HOLDERS} more runs)" if len(top) > TOP_HOLDERS else ""
        lines.append(f"Largest holders by DAG run (DAG / run): {shown}{more}.")
    elif limit is not None:
        lines.append(f"No XCom objects named {prefix}/... hold memory in this vineyardd.")
    if used is not None:
        other = used - pending - sum(h.bytes for h in top)
        if other > 0:
            lines.append(
                f"{format_bytes(other)} are held by objects without an XCom name (other clients' objects, "
                "or puts in flight)."
            )
    return lines


def _fix(needed: int, limit: int | None, used: int | None) -> str:
    """What to do: a larger store when the value alone exceeds it, else free old runs first."""
    if limit is not None and required_bytes(needed) > limit:
        return (
            f"Fix: the value alone is larger than the whole store: start vineyardd with --size of at least "
            f"{format_bytes(required_bytes(needed) + (used or 0))} (what it holds now plus this value), or "
            "return a smaller value."
        )
    return (
        "Fix: release old DAG runs' objects (`fluid-airflow gc` reclaims runs past [fluid] keep_for and "
        "cleared or deleted runs; a FluidReleaseRunOperator frees a run as it ends), or start vineyardd "
        "with a larger --size."
    )


def _amount(n: int | None) -> str:
    return "an unknown amount" if n is None else f"{format_bytes(n)} ({n} bytes)"


def _where(client: Client) -> str:
    try:
        return f" at {client.ipc_socket}" if client.is_ipc else f" at {client.rpc_endpoint}"
    except Exception:
        return ""
