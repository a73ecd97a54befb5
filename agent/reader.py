"""What a viewer may read about one run: the latest tick, recent history, findings, run info.

Two implementations share one interface (:class:`Reader`): :class:`LiveReader` over a running
:class:`agent.session.Session` (the snapshot hub plus a small in-memory window of the metrics
the viewer tracks, and ``store.cursor()`` for older history), and :class:`RecordedReader` over
a read-only DuckDB connection at a movable time cursor. Viewers (the TUI) never touch the
store, DuckDB or the collectors themselves. Nothing here imports Textual.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from agent.catalog import CATALOG
from agent.errors import UsageError
from agent.model import Batch, BatchBuilder, Event, RunInfo
from agent.snapshot import Key, Snapshot

if TYPE_CHECKING:
    import duckdb

    from agent.session import Session

#: Display order of severities (the analysis core emits info, warning, critical).
SEVERITY_RANK = {"critical": 0, "error": 1, "warning": 2, "info": 3}
#: Longest window a viewer may ask the live reader to keep in memory.
MAX_WINDOW_S = 900.0


class RunNotFoundError(UsageError):
    """The database holds no run with that id or name."""


@dataclass(frozen=True)
class Finding:
    """One analysis finding as a viewer shows it."""

    rule: str
    severity: str
    entity: str
    summary: str
    next_step: str
    evidence: Mapping[str, Any]
    start_ts: float | None
    end_ts: float | None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Finding:
        evidence = raw.get("evidence") or {}
        if isinstance(evidence, str):
            try:
                evidence = json.loads(evidence)
            except ValueError:
                evidence = {"text": evidence}
        if not isinstance(evidence, Mapping):
            evidence = {"value": evidence}
        return cls(
            rule=str(raw.get("rule", "")),
            severity=str(raw.get("severity", "info")).lower(),
            entity=str(raw.get("entity") or ""),
            summary=str(raw.get("summary", "")),
            next_step=str(raw.get("next_step") or ""),
            evidence=evidence,
            start_ts=_epoch(raw.get("start_ts")),
            end_ts=_epoch(raw.get("end_ts")),
        )


def order_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then newest first."""
    return sorted(
        findings,
        key=lambda f: (SEVERITY_RANK.get(f.severity, len(SEVERITY_RANK)), -(f.start_ts or 0.0)),
    )


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


def _epoch(value: Any) -> float | None:
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
    cursor: duckdb.DuckDBPyConnection, run_id: str, entity: str, metric: str,
    start: float, end: float,
) -> Series:
    """Run the history query on ``cursor`` (owned by the calling thread)."""
    # Widen by one microsecond-safe step so the counter's first rate has a predecessor.
    lo = int(start * 1e6) - (1_000_000 if CATALOG.get(metric) and CATALOG[metric].is_counter else 0)
    cols = cursor.execute(
        _history_sql(metric), [run_id, entity, metric, lo, int(end * 1e6)]
    ).fetchnumpy()
    ts = np.asarray(cols["t"], dtype=np.float64) / 1e6
    values = np.asarray(cols["v"], dtype=np.float64)
    keep = ts >= start
    return Series(ts[keep], values[keep])


class _RecentWindow:
    """Bounded per-key (ts, value) rings for the tracked metrics, filled on the sampler thread."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.metrics: frozenset[str] = frozenset()
        self._rings: dict[Key, deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def add(self, snap: Snapshot) -> None:
        if not self.metrics:
            return
        tracked = self.metrics
        with self._lock:
            for (entity, name), value in snap.values.items():
                if name in tracked:
                    ring = self._rings.get((entity, name))
                    if ring is None:
                        ring = self._rings[(entity, name)] = deque(maxlen=self.capacity)
                    ring.append((snap.ts, value))

    def window(self, now: float, window_s: float) -> dict[Key, np.ndarray]:
        since = now - window_s
        with self._lock:
            items = [(key, list(ring)) for key, ring in self._rings.items()]
        return {key: np.fromiter((v for t, v in pts if t > since), np.float64) for key, pts in items}


class LiveReader:
    """Reads a running session without ever blocking its sampler."""

    live = True

    def __init__(self, session: Session) -> None:
        if session.run is None:
            raise ValueError("the session has not started recording")
        self.session = session
        self.run: RunInfo = session.run
        interval = max(session.config.interval, 0.05)
        self._recent = _RecentWindow(int(MAX_WINDOW_S / interval) + 2)
        self._notices: dict[str, str] = dict(session.startup_notices)
        self._callbacks: list[Callable[[], None]] = []
        self._stopped_by_viewer = False
        session.hub.subscribe(self._on_tick)

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
        snap = self.session.hub.latest
        if snap is None:
            return None
        store = self.session.store
        health: dict[str, Any] = {
            "samples": store.rows_written,
            "dropped_ticks": store.dropped_ticks,
            "missed_ticks": snap.stats.get("missed_ticks", 0),
            "disabled": dict(snap.stats.get("disabled") or {}),
            **self.session.health,
        }
        if store.last_error:
            health["store_error"] = store.last_error
        return Frame(
            snapshot=snap,
            recent=self._recent.window(snap.ts, window_s),
            findings=order_findings(Finding.from_mapping(f) for f in self.session.live_findings),
            health=health,
            notices=dict(self._notices),
        )

    def history(self, entity: str, metric: str, start: float, end: float) -> Series:
        cursor = self.session.store.cursor()
        try:
            return query_history(cursor, self.run.run_id, entity, metric, start, end)
        finally:
            cursor.close()

    def wait_end(self) -> str:
        """Block until the target exits, the duration passes or a stop is requested; the reason."""
        self.session.wait()
        return self.session.stop_reason or "stopped"

    def target_exit_code(self) -> int | None:
        child = self.session.child
        if child is None or child.poll() is None:
            return None
        code = child.returncode
        return 128 - code if code < 0 else code

    def stop(self, reason: str) -> None:
        """Ask the session to stop recording (it finalizes once the viewer returns)."""
        self.session.request_stop(reason)

    def close(self) -> None:
        self.session.hub.unsubscribe(self._on_tick)
        self._callbacks.clear()
        if not self.session.stop_requested.is_set():
            self.stop("viewer closed")


class RecordedReader:
    """A recorded run at a time cursor, over a read-only DuckDB connection."""

    live = False

    def __init__(self, con: duckdb.DuckDBPyConnection, run: RunInfo) -> None:
        self._con = con
        self.run = run
        self._tracked: frozenset[str] = frozenset()
        ticks = con.execute(
            "SELECT DISTINCT epoch_us(ts) AS t FROM samples WHERE run_id = ? ORDER BY t",
            [run.run_id],
        ).fetchnumpy()["t"]
        #: Every tick of the run (epoch seconds), ascending.
        self.ticks = np.asarray(ticks, dtype=np.int64)
        self.cursor = max(len(self.ticks) - 1, 0)
        self.findings = self._load_findings()

    @classmethod
    def open(cls, db_path: str, run: str | None = None) -> RecordedReader:
        """Open ``db_path`` read-only at run ``run`` (id or name; default: the latest)."""
        from agent.store import connect

        con = connect(db_path, read_only=True)
        try:
            return cls(con, _find_run(con, run, db_path))
        except BaseException:
            con.close()
            raise

    # -- the time cursor
    @property
    def cursor_ts(self) -> float:
        return float(self.ticks[self.cursor]) / 1e6 if len(self.ticks) else self.run.started

    def seek_index(self, index: int) -> int:
        self.cursor = int(min(max(index, 0), max(len(self.ticks) - 1, 0)))
        return self.cursor

    def seek_time(self, ts: float) -> int:
        """Move to the last tick at or before ``ts``."""
        index = int(np.searchsorted(self.ticks, int(ts * 1e6), side="right")) - 1
        return self.seek_index(index)

    def finding_times(self) -> list[float]:
        return sorted({f.start_ts for f in self.findings if f.start_ts is not None})

    def next_finding(self, direction: int) -> int:
        """Move to the next (``+1``) or previous (``-1``) finding's start; stay if none."""
        now = self.cursor_ts
        times = self.finding_times()
        ahead = [t for t in times if t > now + 1e-6] if direction > 0 else \
            [t for t in times if t < now - 1e-6]
        if not ahead:
            return self.cursor
        return self.seek_time(ahead[0] if direction > 0 else ahead[-1])

    # -- Reader
    def track(self, metrics: Iterable[str]) -> None:
        self._tracked = frozenset(metrics)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """A recording never changes; nothing to notify."""

    def frame(self, window_s: float) -> Frame | None:
        if not len(self.ticks):
            return None
        cur = self._con.cursor()
        try:
            return self._frame(cur, self.cursor, window_s)
        finally:
            cur.close()

    def _frame(self, cur: duckdb.DuckDBPyConnection, index: int, window_s: float) -> Frame:
        run_id = self.run.run_id
        tick = int(self.ticks[index])
        prev = int(self.ticks[index - 1]) if index > 0 else None
        rows = cur.execute(
            "SELECT epoch_us(ts) AS t, source, entity, metric, value FROM samples "
            "WHERE run_id = ? AND ts IN (make_timestamp(?), make_timestamp(?))",
            [run_id, tick, prev if prev is not None else tick],
        ).fetchall()
        events = [
            Event(t / 1e6, kind, entity, json.loads(detail or "{}"))
            for t, kind, entity, detail in cur.execute(
                "SELECT epoch_us(ts), kind, entity, detail FROM events WHERE run_id = ? "
                "AND ts <= make_timestamp(?) ORDER BY ts", [run_id, tick],
            ).fetchall()
        ]
        attrs = {
            entity: json.loads(raw or "{}")
            for entity, raw in cur.execute(
                "SELECT entity, attrs FROM entities WHERE run_id = ? "
                "AND first_seen <= make_timestamp(?)", [run_id, tick],
            ).fetchall()
        }
        samples_so_far = cur.execute(
            "SELECT count(*) FROM samples WHERE run_id = ? AND ts <= make_timestamp(?)",
            [run_id, tick],
        ).fetchone()[0]
        snapshot = _snapshot(index + 1, tick, prev, rows, attrs,
                             [e for e in events if prev is None or e.ts * 1e6 > prev])
        disabled = {e.entity: str(e.detail.get("reason", "")) for e in events
                    if e.kind == "collector_disabled"}
        notices = {e.entity: str(e.detail.get("reason", e.kind)) for e in events
                   if e.kind in ("collector_unavailable", "collector_disabled")}
        now = tick / 1e6
        return Frame(
            snapshot=snapshot,
            recent=self._recent(cur, now - window_s, now),
            findings=order_findings(
                f for f in self.findings if f.start_ts is None or f.start_ts <= now + 1e-6
            ),
            health={"samples": samples_so_far, "disabled": disabled},
            notices=notices,
        )

    def _recent(self, cur: duckdb.DuckDBPyConnection, start: float, end: float
                ) -> dict[Key, np.ndarray]:
        if not self._tracked:
            return {}
        metrics = sorted(self._tracked)
        cols = cur.execute(
            "SELECT entity, metric, value FROM samples WHERE run_id = ? AND metric IN "
            f"({', '.join('?' * len(metrics))}) AND ts > make_timestamp(?) "
            "AND ts <= make_timestamp(?) ORDER BY entity, metric, ts",
            [self.run.run_id, *metrics, int(start * 1e6), int(end * 1e6)],
        ).fetchnumpy()
        out: dict[Key, np.ndarray] = {}
        entities, names = cols["entity"], cols["metric"]
        values = np.asarray(cols["value"], dtype=np.float64)
        if not len(values):
            return out
        keys = np.char.add(np.char.add(entities.astype(str), "\x00"), names.astype(str))
        change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
        for lo, hi in zip(np.r_[0, change], np.r_[change, len(values)]):
            out[(str(entities[lo]), str(names[lo]))] = values[lo:hi]
        return out

    def history(self, entity: str, metric: str, start: float, end: float) -> Series:
        cur = self._con.cursor()
        try:
            return query_history(cur, self.run.run_id, entity, metric, start, end)
        finally:
            cur.close()

    def _load_findings(self) -> list[Finding]:
        rows = self._con.execute(
            "SELECT rule, severity, entity, summary, evidence, next_step, start_ts, end_ts, live "
            "FROM findings WHERE run_id = ?", [self.run.run_id],
        ).fetchall()
        final = [r for r in rows if not r[8]]
        chosen = final or rows  # the post-run analysis supersedes what was found live
        cols = ("rule", "severity", "entity", "summary", "evidence", "next_step",
                "start_ts", "end_ts")
        return order_findings(Finding.from_mapping(dict(zip(cols, r))) for r in chosen)

    def close(self) -> None:
        self._con.close()


def _snapshot(seq: int, tick: int, prev: int | None, rows: Sequence[tuple],
              attrs: Mapping[str, Mapping[str, Any]], events: list[Event]) -> Snapshot:
    """A :class:`Snapshot` rebuilt from two recorded ticks (``prev`` gives counter rates)."""
    builders: dict[str, BatchBuilder] = {}
    previous: dict[Key, float] = {}
    values: dict[Key, float] = {}
    for t, source, entity, name, value in rows:
        if t == tick:
            builder = builders.get(source)
            if builder is None:
                builder = builders[source] = BatchBuilder(source, tick / 1e6)
            builder.add(entity, name, value)
            values[(entity, name)] = value
        else:
            previous[(entity, name)] = value
    batches: tuple[Batch, ...] = tuple(b.build() for b in builders.values())
    return Snapshot(
        ts=tick / 1e6, seq=seq, batches=batches, values=values, previous=previous,
        previous_ts=prev / 1e6 if prev is not None else None,
        entity_attrs=attrs, events=tuple(events),
    )


def _find_run(con: duckdb.DuckDBPyConnection, run: str | None, db_path: str) -> RunInfo:
    where, params = ("", []) if run is None else ("WHERE run_id = ? OR name = ?", [run, run])
    row = con.execute(
        "SELECT run_id, name, pid, cmdline, cwd, host, started, interval_s, tags, env, mode, "
        f"simulated, scenario, ended, exit_code, status FROM runs {where} "
        "ORDER BY (run_id = ?) DESC, started DESC LIMIT 1", [*params, run or ""],
    ).fetchone()
    if row is None:
        if run is None:
            raise RunNotFoundError(f"no runs recorded in {db_path}")
        raise RunNotFoundError(f"no run {run!r} in {db_path} (see `accelwatch runs --db {db_path}`)")
    (run_id, name, pid, cmdline, cwd, host, started, interval, tags, env, mode, simulated,
     scenario, ended, exit_code, status) = row
    return RunInfo(
        run_id=run_id, name=name, pid=pid, cmdline=list(cmdline or []), cwd=cwd or "",
        host=host or "", started=_epoch(started) or time.time(), interval=interval or 1.0,
        db_path=str(db_path), tags=json.loads(tags or "{}"), env=json.loads(env or "{}"),
        mode=mode or "attach", simulated=bool(simulated), scenario=scenario,
        ended=_epoch(ended), exit_code=exit_code, status=status or "unknown",
    )
