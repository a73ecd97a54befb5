"""What a viewer may read about one run: the latest tick, recent history, findings, run info.

Two implementations share one interface (:class:`Reader`): :class:`LiveReader` over a running
:class:`agent.context.LiveContext` (the snapshot hub plus a small in-memory window of the metrics
the viewer tracks, and ``store.cursor()`` for older history), and
:class:`agent.recorded.RecordedReader` over a read-only DuckDB connection at a movable time
cursor. Viewers (the TUI) never touch the
store, DuckDB or the collectors themselves. Nothing here imports Textual.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import takewhile
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from agent.analysis.finding import Finding, order_findings
from agent.catalog import CATALOG
from agent.model import Batch, RunInfo
from agent.snapshot import Key, Snapshot

if TYPE_CHECKING:
    import duckdb

    from agent.context import LiveContext, RecordingControl
    from agent.runs import ReadConnection

#: Longest window a viewer may ask the live reader to keep in memory.
MAX_WINDOW_S = 900.0


@dataclass(frozen=True)
class Series:
    """Timestamps (epoch seconds) and values of one metric of one entity."""

    ts: np.ndarray
    values: np.ndarray

    @classmethod
    def empty(cls) -> Series:
        return cls(np.empty(0), np.empty(0))

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Frame:
    """Everything a viewer draws for one moment of a run."""

    snapshot: Snapshot
    #: Recent values of each tracked (entity, metric), oldest first, within the window asked.
    recent: Mapping[Key, np.ndarray]
    findings: list[Finding]
    #: Recording health: samples, dropped/missed ticks, disabled collectors, consumer counters.
    health: Mapping[str, Any]
    #: Collectors that never started or were disabled: source → reason.
    notices: Mapping[str, str] = field(default_factory=dict)


class Reader(Protocol):
    """The viewer-facing interface common to live and recorded runs."""

    live: bool
    run: RunInfo

    def track(self, metrics: Iterable[str]) -> None:
        """Metrics whose recent values every :class:`Frame` should carry."""

    def frame(self, window_s: float) -> Frame | None:
        """The current moment (live: latest tick; recorded: the cursor's tick)."""

    def history(self, entity: str, metric: str, start: float, end: float) -> Series:
        """One metric between two times (counters as per-second rates); call from a worker."""

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from another thread) whenever a new tick is available."""

    def close(self) -> None:
        """Release resources; a live reader also stops the recording."""


def rank_label(env: Mapping[str, str]) -> str:
    """``rank 3/8 (local 3)`` from the run's whitelisted environment, or ``""``."""
    rank = env.get("RANK") or env.get("SLURM_PROCID")
    world = env.get("WORLD_SIZE") or env.get("SLURM_NTASKS")
    local = env.get("LOCAL_RANK") or env.get("SLURM_LOCALID")
    if rank is None and local is None:
        return ""
    text = f"rank {rank if rank is not None else '?'}"
    if world:
        text += f"/{world}"
    if local is not None and local != rank:
        text += f" (local {local})"
    return text


def epoch_seconds(value: Any) -> float | None:
    """Seconds since the epoch from a number, an ISO string or a (naive = UTC) datetime."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):  # naive datetimes (DuckDB, the analysis core) are UTC
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return float(value.timestamp())
    return None


def _history_sql(metric: str) -> str:
    """Points of one metric; counters become per-second rates between consecutive samples."""
    if CATALOG.get(metric) is not None and CATALOG[metric].is_counter:
        return (
            "SELECT t, (value - lag(value) OVER w) * 1e6 / (t - lag(t) OVER w) AS v FROM ("
            "  SELECT epoch_us(ts) AS t, value FROM samples WHERE run_id = ? AND entity = ? "
            "  AND metric = ? AND ts BETWEEN make_timestamp(?) AND make_timestamp(?)) "
            "WINDOW w AS (ORDER BY t) QUALIFY v IS NOT NULL AND v >= 0 ORDER BY t"
        )
    return (
        "SELECT epoch_us(ts) AS t, value AS v FROM samples WHERE run_id = ? AND entity = ? "
        "AND metric = ? AND ts BETWEEN make_timestamp(?) AND make_timestamp(?) ORDER BY t"
    )


def query_history(
    cursor: duckdb.DuckDBPyConnection | ReadConnection,
    run_id: str,
    entity: str,
    metric: str,
    start: float,
    end: float,
    *,
    interval: float = 1.0,
) -> Series:
    """Run the history query on ``cursor`` (owned by the calling thread)."""
    counter = CATALOG.get(metric) is not None and CATALOG[metric].is_counter
    # A counter's first rate in the window needs the sample one interval before it.
    lo = int((start - (1.5 * interval if counter else 0.0)) * 1e6)
    cols = cursor.execute(
        _history_sql(metric), [run_id, entity, metric, lo, int(end * 1e6)]
    ).fetchnumpy()
    ts = np.asarray(cols["t"], dtype=np.float64) / 1e6
    values = np.asarray(cols["v"], dtype=np.float64)
    keep = ts >= start
    return Series(ts[keep], values[keep])


#: Shapes of a source's rows whose plans the recent window keeps.
_SHAPES_KEPT = 4


class _RecentWindow:
    """Bounded per-key (ts, value) rings for the tracked metrics, filled on the sampler thread.

    A tick touches only the values it keeps: per batch, where the tracked values sit (their
    positions and rings) is found once per shape of its rows and reused while the source sends
    rows of that shape (a list compare in C), so the rest of the tick (every process's values)
    costs no Python. A source may alternate between a few shapes (NVML's per-process rows come
    and go): the last :data:`_SHAPES_KEPT` are kept."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._metrics: frozenset[str] = frozenset()
        self._rings: dict[Key, deque[tuple[float, float]]] = {}
        #: Per (batch position, source): its latest shapes' plans, the last used first.
        self._plans: dict[tuple[int, str], list[_Plan]] = {}
        self._lock = threading.Lock()

    @property
    def metrics(self) -> frozenset[str]:
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: frozenset[str]) -> None:
        with self._lock:
            self._metrics = frozenset(metrics)
            self._plans.clear()

    def add(self, snap: Snapshot) -> None:
        if not self._metrics:
            return
        ts = snap.ts
        with self._lock:
            for i, batch in enumerate(snap.batches):
                plan = self._plan_for(self._plans.setdefault((i, batch.source), []), batch)
                values = batch.values
                for position, ring in plan.slots:
                    ring.append((ts, values[position]))

    def _plan_for(self, plans: list[_Plan], batch: Batch) -> _Plan:
        """The plan of ``batch``'s shape among ``plans`` (moved first), or a new one."""
        for i, plan in enumerate(plans):
            if plan.fits(batch):
                if i:
                    plans.insert(0, plans.pop(i))
                return plan
        plan = self._plan(batch)
        plans.insert(0, plan)
        del plans[_SHAPES_KEPT:]
        return plan

    def _plan(self, batch: Batch) -> _Plan:
        """Where ``batch``'s tracked values are (the last of a repeated key, as in
        ``Snapshot.values``), each with its ring."""
        tracked = self._metrics
        found: dict[Key, int] = {}
        for position, (entity, name) in enumerate(zip(batch.entities, batch.metrics)):
            if name in tracked:
                found[(entity, name)] = position
        slots = []
        for key, position in found.items():
            ring = self._rings.get(key)
            if ring is None:
                ring = self._rings[key] = deque(maxlen=self.capacity)
            slots.append((position, ring))
        return _Plan(batch.entities, batch.metrics, slots)

    def window(self, now: float, window_s: float) -> dict[Key, np.ndarray]:
        """Values newer than ``now - window_s`` per key, oldest first (reads only those)."""
        since = now - window_s
        out: dict[Key, np.ndarray] = {}
        with self._lock:
            for key, ring in self._rings.items():
                recent = [v for _, v in takewhile(lambda p: p[0] > since, reversed(ring))]
                out[key] = np.array(recent[::-1], dtype=np.float64)
        return out


@dataclass(frozen=True)
class _Plan:
    """One batch's rows, and the (position, ring) of each tracked value among them."""

    entities: Sequence[str]
    metrics: Sequence[str]
    slots: list[tuple[int, deque[tuple[float, float]]]]

    def fits(self, batch: Batch) -> bool:
        """``batch`` has the same rows (the same lists, or equal ones)."""
        return _same(self.metrics, batch.metrics) and _same(self.entities, batch.entities)


def _same(a: Sequence[str], b: Sequence[str]) -> bool:
    if a is b:
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return a == b
    return False  # another kind of sequence (an array): plan again rather than guess


class LiveReader:
    """Reads a recording in progress through its :class:`LiveContext`, never blocking sampling."""

    live = True

    def __init__(self, context: LiveContext, control: RecordingControl) -> None:
        self.context = context
        self.control = control
        self.run: RunInfo = context.run
        interval = max(context.interval, 0.05)
        self._recent = _RecentWindow(int(MAX_WINDOW_S / interval) + 2)
        self._notices: dict[str, str] = dict(context.startup_notices)
        self._callbacks: list[Callable[[], None]] = []
        context.hub.subscribe(self._on_tick)

    def track(self, metrics: Iterable[str]) -> None:
        self._recent.metrics = frozenset(metrics)

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _on_tick(self, snap: Snapshot) -> None:
        """Sampler thread: keep the tracked values and notices, then wake the viewer."""
        self._recent.add(snap)
        for event in snap.events:
            if event.kind in ("collector_unavailable", "collector_disabled"):
                self._notices[event.entity] = str(event.detail.get("reason", event.kind))
        for callback in list(self._callbacks):
            callback()

    def frame(self, window_s: float) -> Frame | None:
        snap = self.context.hub.latest
        if snap is None:
            return None
        health: dict[str, Any] = {
            "missed_ticks": snap.stats.get("missed_ticks", 0),
            "disabled": dict(snap.stats.get("disabled") or {}),
            **self.context.health,
        }
        return Frame(
            snapshot=snap,
            recent=self._recent.window(snap.ts, window_s),
            findings=order_findings(Finding.from_mapping(f) for f in self.context.findings),
            health=health,
            notices=dict(self._notices),
        )

    def history(self, entity: str, metric: str, start: float, end: float) -> Series:
        cursor = self.context.cursor()
        try:
            return query_history(
                cursor, self.run.run_id, entity, metric, start, end, interval=self.run.interval
            )
        finally:
            cursor.close()

    def wait_end(self) -> str:
        """Block until the target exits, the duration passes or a stop is requested; the reason."""
        return self.control.wait_end()

    def target_exit_code(self) -> int | None:
        return self.control.target_exit_code()

    def stop(self, reason: str) -> None:
        """Ask the recording to stop (it finalizes once the viewer returns)."""
        self.control.stop(reason)

    def close(self) -> None:
        self.context.hub.unsubscribe(self._on_tick)
        self._callbacks.clear()
        if not self.control.stopping():
            self.stop("viewer closed")
