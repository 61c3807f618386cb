"""XCom-backend-level comparison: every peer x every kind x every size, side by side in one run.

For each kind (outer loop) and size (inner loop) the producer builds the value once; then each
peer in turn hands it over ``warm-ups + runs`` times (put in one forked process, get + scan in
another, purge). Our vineyardd is started for the case, sized for it, and stopped right after
our runs, because vineyardd keeps memory it once used until it stops.

Sizes are capped by memory: before each peer runs, the memory it needs (bytes it stores plus
the larger of the producer's and the consumer's private peak, per payload byte, as measured at
the previous size, or a floor) must fit in what the machine has available minus a reserve.
Whatever does not fit is skipped and reported as such.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench import data
from bench.measure import Worker
from bench.peers import OURS, Peer

MiB = 1 << 20
GiB = 1 << 30
RESERVE = 4 * GiB  # left free for the OS and whatever else runs on the machine
CASE_BUDGET = 6.0  # seconds of measured runs per peer x kind x size
SQLITE_MAX_LENGTH = 1_000_000_000  # longest string or blob SQLite stores (its default limit)

# Memory a hand-off needs per payload byte before anything was measured (floors).
NEED_FLOOR = {
    "vineyard": 1.3,
    "objectstore-disk": 8.0,
    "objectstore-shm": 9.0,
    "airflow-db": 8.0,
    "pickle-shm": 2.1,
    "arrow-ipc-shm": 2.1,
}
STRING_KINDS = ("df_strings", "arrow_table", "df_str", "polars_df")


@dataclass
class Case:
    """One peer x kind x size: its measured runs (warm-ups excluded), or why there are none."""

    peer: str
    kind: str
    size: int  # nominal bytes (1 MiB ... 4 GiB)
    payload: int = 0  # exact payload bytes
    runs: list[dict[str, Any]] = field(default_factory=list)
    warmups: int = 0
    skipped: str | None = None
    error: str | None = None
    value_type: str | None = None

    def median(self, key: str) -> float | None:
        """Median of ``key`` over the runs (``handoff_s`` = put + get + scan), None without runs."""
        if not self.runs:
            return None
        if key == "handoff_s":
            return statistics.median(r["put_s"] + r["get_scan_s"] for r in self.runs)
        return statistics.median(r[key] for r in self.runs)

    def need_factor(self) -> float | None:
        """Memory the hand-off needed per payload byte: stored bytes + larger private peak."""
        if not self.runs or not self.payload:
            return None
        worst = max(r["stored_bytes"] + max(r["put_private"], r["get_private"]) for r in self.runs)
        return worst / self.payload

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary with medians."""
        keys = (
            "put_faults",
            "get_faults",
            "put_s",
            "get_s",
            "get_scan_s",
            "handoff_s",
            "get_private",
            "get_rss",
            "row_bytes",
            "stored_bytes",
        )
        return {
            "peer": self.peer,
            "kind": self.kind,
            "size": self.size,
            "payload": self.payload,
            "n": len(self.runs),
            "warmups": self.warmups,
            "skipped": self.skipped,
            "error": self.error,
            "value_type": self.value_type,
            **{k: self.median(k) for k in keys},
        }


def plan(predicted: float | None, ours: bool, quick: bool, late: bool) -> tuple[int, int]:
    """(warm-ups, measured runs) for a hand-off predicted to take ``predicted`` seconds.

    Runs fill about :data:`CASE_BUDGET` seconds (1 to 5 runs); one warm-up when a run is short
    (< 4 s; < 12 s for ours, whose vineyardd is fresh in each case and pays first-touch of its
    memory in the first put). ``late``: the run is past its time budget, so one run only.
    """
    warm = 1 if predicted is None or predicted < (12.0 if ours else 4.0) else 0
    if quick or late:
        return warm, 1
    if predicted is None:
        return 1, 5
    return warm, max(1, min(5, int(CASE_BUDGET / max(predicted, 1e-3))))


def private_growth(r: dict[str, Any]) -> int:
    """Peak private-memory growth of a forked worker, bytes (see :mod:`bench.measure`)."""
    return max(
        r.get("anon_peak", 0) - r["anon_before"],
        r["rss_growth"] - max(r["shared_growth"], 0),
        r["anon_growth_end"],
        0,
    )


class ApiBench:
    """Runs the comparison; :meth:`run` returns one :class:`Case` per peer x kind x size."""

    def __init__(
        self,
        peers: list[Peer],
        sizes: list[int],
        producer: Worker,
        consumer: Worker,
        vineyardd: Any,
        quick: bool = False,
        budget: float = 480.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.peers, self.sizes, self.quick, self.say = peers, sizes, quick, say
        self.deadline = time.monotonic() + budget
        self.producer, self.consumer, self.vineyardd = producer, consumer, vineyardd
        self.cases: list[Case] = []
        self._blocked: dict[tuple[str, str], str] = {}  # (peer, kind) -> why larger sizes are not tried
        self._last: dict[tuple[str, str], Case] = {}

    def run(self, kinds: tuple[str, ...] = data.KINDS) -> list[Case]:
        for kind in kinds:
            missing = _missing_module(kind)
            for size in self.sizes:
                peers = self._peers_for(kind)
                if missing or (kind in data.LIMITED and size > data.LIMITED_MAX):
                    why = f"{missing} is not installed" if missing else "not measured above 1 GiB"
                    self.cases += [Case(p.name, kind, size, skipped=why) for p in peers]
                    continue
                started = time.monotonic()
                made = self.producer.call("make", kind=kind, nbytes=size)
                if "error" in made:
                    self.cases += [Case(p.name, kind, size, error=made["error"]) for p in peers]
                    continue
                line = []
                for peer in peers:
                    case = self._run_case(peer, kind, size, made["payload"])
                    self.cases.append(case)
                    line.append(f"{peer.name} {_short(case)}")
                self.producer.call("drop")
                took = time.monotonic() - started
                self.say(f"  {kind:<11} {_size(size):>7} ({took:4.0f} s): " + " | ".join(line))
        return self.cases

    def _peers_for(self, kind: str) -> list[Peer]:
        if kind not in data.LIMITED:
            return self.peers
        return [p for p in self.peers if p.name in data.LIMITED_PEERS]

    def _run_case(self, peer: Peer, kind: str, size: int, payload: int) -> Case:
        case = Case(peer.name, kind, size, payload)
        blocked = self._blocked.get((peer.name, kind))
        if blocked:
            case.skipped = blocked
            return case
        previous = self._last.get((peer.name, kind))
        floor = NEED_FLOOR[peer.name] + (1.5 if kind in STRING_KINDS and peer.name == OURS else 0.0)
        factor = max(floor, (previous.need_factor() or 0.0) if previous else 0.0)
        need, available = int(factor * payload) + 64 * MiB, psutil.virtual_memory().available
        if need > available - RESERVE:
            case.skipped = f"needs ~{need / GiB:.1f} GiB, {available / GiB:.1f} GiB available"
            return case
        predicted = None
        if previous and previous.runs:
            scale = payload / max(previous.payload, 1)
            predicted = (previous.median("handoff_s") or 0.0) * scale
            row = (previous.median("row_bytes") or 0.0) * scale
            if row > SQLITE_MAX_LENGTH:
                was = (previous.median("row_bytes") or 0.0) / 1e9
                case.skipped = (
                    f"not tried: its DB row would be ~{row / 1e9:.1f} GB ({was:.2f} GB at "
                    f"{_size(previous.size)}), over SQLite's limit of 1 GB per value"
                )
                return case
        late = time.monotonic() > self.deadline
        case.warmups, runs = plan(predicted, peer.name == OURS, self.quick, late)
        if peer.name == OURS:
            try:
                self.vineyardd.start(str(int(payload * 1.6) + 256 * MiB))
            except Exception as exc:
                case.skipped = f"vineyardd could not start: {exc}"
                return case
        try:
            for i in range(case.warmups + runs):
                result = self._handoff(peer, kind, size, i)
                if "error" in result:
                    case.error = result["error"]
                    self._block(peer.name, kind, size, result["error"])
                    if self._blocked[(peer.name, kind)].startswith("cannot carry"):
                        case.skipped = self._blocked[(peer.name, kind)]
                    break
                case.value_type = result.get("type")
                if i >= case.warmups:
                    case.runs.append(result)
        finally:
            if peer.name == OURS:
                self.vineyardd.stop()
        self._last[(peer.name, kind)] = case
        return case

    def _block(self, peer: str, kind: str, size: int, error: str) -> None:
        if error.startswith("TypeError") and size == self.sizes[0]:
            self._blocked[(peer, kind)] = f"cannot carry this type ({error})"
        else:
            self._blocked[(peer, kind)] = f"not tried: failed at {_size(size)}"

    def _handoff(self, peer: Peer, kind: str, size: int, i: int) -> dict[str, Any]:
        case_id = f"{kind}-{size // MiB}MiB-{peer.name}-{i}-{time.time_ns()}"
        try:
            put = self.producer.call("put", peer=peer.name, case_id=case_id)
            if "error" in put:
                return put
            got = self.consumer.call("get", peer=peer.name, case_id=case_id)
            if "error" in got:
                return got
        finally:
            purged = self.producer.call("purge", peer=peer.name, case_id=case_id)
            if "error" in purged:
                self.say(f"    warning: purge of {case_id} failed: {purged['error']}")
        return {
            "put_s": put["put_s"],
            "get_s": got["get_s"],
            "get_scan_s": got["get_scan_s"],
            "get_rss": got["rss_growth"],
            "get_private": private_growth(got),
            "put_private": private_growth(put),
            "put_faults": put["faults"],
            "get_faults": got["faults"],
            "row_bytes": put["row_bytes"],
            "stored_bytes": put["stored_bytes"],
            "type": got["type"],
        }


def _missing_module(kind: str) -> str | None:
    """The module ``kind`` needs when it is not installed, else None."""
    import importlib.util

    module = data.LIMITED.get(kind)
    return module if module and importlib.util.find_spec(module) is None else None


def _size(n: int) -> str:
    return f"{n // GiB} GiB" if n >= GiB else f"{n // MiB} MiB"


def _short(case: Case) -> str:
    if case.skipped:
        return "skip" if case.skipped.startswith(("cannot", "not tried")) else "skip (memory)"
    if case.error and not case.runs:
        return "FAILED"
    return f"{case.median('handoff_s'):.3g} s"
