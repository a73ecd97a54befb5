"""A recorded run read back at a movable time cursor (``accelwatch view``), read-only.

Implements :class:`agent.reader.Reader` over a read connection (:mod:`agent.runs`): the file
read-only, or the recording agent's socket while the run is still being recorded, in which case
the reader follows the recording (polls for new ticks and findings). Every query is independent,
so frames and history can be asked from worker threads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.errors import StoreError, UsageError
from agent.model import Batch, BatchBuilder, Event, RunInfo
from agent.reader import Finding, Frame, Series, order_findings, query_history
from agent.runs import (
    ReadConnection,
    ReadResult,
    RunNotFoundError,
    find_run,
    open_read,
    stored_findings,
)
from agent.series import has_series, series_filter
from agent.snapshot import Key, Snapshot

if TYPE_CHECKING:
    import duckdb

__all__ = ["RecordedReader", "RunNotFoundError"]

#: How often a reader following a live recording asks for new ticks.
FOLLOW_POLL_S = 1.0


class _HandOver:
    """A read connection that survives the end of the recording it reads through: when the
    agent goes away (the run ended), the file is free, so reopen it and ask again."""

    def __init__(self, db: ReadConnection, db_path: str) -> None:
        self._db = db
        self._path = db_path
        self._lock = threading.Lock()

    @property
    def via(self) -> str:
        return self._db.via

    @property
    def duckdb(self) -> duckdb.DuckDBPyConnection | None:
        return self._db.duckdb

    def execute(self, sql: str, params: Sequence[Any] = ()) -> ReadResult:
        db = self._db
        try:
            return db.execute(sql, params)
        except UsageError:
            raise
        except StoreError:
            if db.via != "agent":
                raise
        with self._lock:
            if self._db is db:
                db.close()
                self._db = open_read(self._path)
        return self._db.execute(sql, params)

    def close(self) -> None:
        self._db.close()


class RecordedReader:
    """A recorded run at a time cursor, over a read connection (file or recording agent)."""

    live = False

    def __init__(self, db: ReadConnection, run: RunInfo) -> None:
        self._db = db
        self.run = run
        self._tracked: frozenset[str] = frozenset()
        #: The run's rows of ``sample_values`` when the file stores series ids (schema 3): the
        #: per-tick queries filter the integer column instead of joining labels to every value.
        own = series_filter(db, run.run_id) if has_series(db) else "false"
        self._own_values = None if own == "false" else f"sample_values WHERE {own}"
        #: Every tick of the run (epoch microseconds), ascending.
        self.ticks = np.asarray(self._ticks_after(None), dtype=np.int64)
        self.cursor = max(len(self.ticks) - 1, 0)
        self.findings = self._load_findings()
        self._callbacks: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @classmethod
    def open(cls, db_path: str, run: str | None = None) -> RecordedReader:
        """Open ``db_path`` for reading at run ``run`` (id or name; default: the latest)."""
        db = _HandOver(open_read(db_path), db_path)
        try:
            return cls(db, find_run(db, run, db_path))
        except BaseException:
            db.close()
            raise

    @property
    def following(self) -> bool:
        """True while the run is being recorded by the agent serving this reader."""
        return self._db.via == "agent" and self.run.ended is None

    def _ticks_after(self, after_us: int | None) -> list[int]:
        where = "" if after_us is None else "AND ts > make_timestamp(?)"
        after: list[Any] = [] if after_us is None else [after_us]
        if self._own_values is not None:
            sql = f"SELECT DISTINCT epoch_us(ts) AS t FROM {self._own_values} {where} ORDER BY t"
            params = after
        else:
            sql = f"SELECT DISTINCT epoch_us(ts) AS t FROM samples WHERE run_id = ? {where} ORDER BY t"
            params = [self.run.run_id, *after]
        rows = self._db.execute(sql, params).fetchall()
        return [int(r[0]) for r in rows]

    def refresh(self) -> bool:
        """Take in the ticks and findings recorded since the last look; True if any. A cursor
        at the end stays at the end (the view follows the recording)."""
        last = int(self.ticks[-1]) if len(self.ticks) else None
        new = self._ticks_after(last)
        at_end = self.cursor >= len(self.ticks) - 1
        if new:
            self.ticks = np.concatenate([self.ticks, np.asarray(new, dtype=np.int64)])
            if at_end:
                self.cursor = len(self.ticks) - 1
        findings = self._load_findings()
        changed = bool(new) or findings != self.findings
        self.findings = findings
        run = find_run(self._db, self.run.run_id, self.run.db_path)
        if run.ended is not None and self.run.ended is None:
            self.run = run
            changed = True
        return changed

    def _follow(self) -> None:
        while self.following and not self._stop.wait(FOLLOW_POLL_S):
            try:
                changed = self.refresh()
            except Exception:  # the agent is finalizing (neither socket nor file yet): retry
                continue
            if changed:
                for callback in list(self._callbacks):
                    callback()

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

    def seek_start_of(self, ts: float) -> int:
        """Move to the first tick at or after ``ts``: where something that started at ``ts``
        (a finding's window, which begins at a bucket edge) is first visible."""
        index = int(np.searchsorted(self.ticks, int(round(ts * 1e6)), side="left"))
        return self.seek_index(index)

    def finding_times(self) -> list[float]:
        return sorted({f.start_ts for f in self.findings if f.start_ts is not None})

    def next_finding(self, direction: int) -> int:
        """Move to the next (``+1``) or previous (``-1``) finding's start; stay if none."""
        now = self.cursor_ts
        times = self.finding_times()
        ahead = (
            [t for t in times if t > now + 1e-6]
            if direction > 0
            else [t for t in times if t < now - 1e-6]
        )
        if not ahead:
            return self.cursor
        return self.seek_start_of(ahead[0] if direction > 0 else ahead[-1])

    # -- Reader
    def track(self, metrics: Iterable[str]) -> None:
        self._tracked = frozenset(metrics)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from a poller thread) when a run being recorded gains ticks; a
        finished recording never changes."""
        self._callbacks.append(callback)
        if self.following and self._poller is None:
            self._poller = threading.Thread(
                target=self._follow, name="accelwatch-follow", daemon=True
            )
            self._poller.start()

    def frame(self, window_s: float) -> Frame | None:
        if not len(self.ticks):
            return None
        return self._frame(self._db, self.cursor, window_s)

    def _frame(self, cur: ReadConnection, index: int, window_s: float) -> Frame:
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
                "AND ts <= make_timestamp(?) ORDER BY ts",
                [run_id, tick],
            ).fetchall()
        ]
        attrs = {
            entity: json.loads(raw or "{}")
            for entity, raw in cur.execute(
                "SELECT entity, attrs FROM entities WHERE run_id = ? "
                "AND first_seen <= make_timestamp(?)",
                [run_id, tick],
            ).fetchall()
        }
        samples_so_far = (
            cur.execute(
                f"SELECT count(*) FROM {self._own_values} AND ts <= make_timestamp(?)", [tick]
            ).scalar()
            if self._own_values is not None
            else cur.execute(
                "SELECT count(*) FROM samples WHERE run_id = ? AND ts <= make_timestamp(?)",
                [run_id, tick],
            ).scalar()
        )
        snapshot = _snapshot(
            index + 1,
            tick,
            prev,
            rows,
            attrs,
            [e for e in events if prev is None or e.ts * 1e6 > prev],
        )
        disabled = {
            e.entity: str(e.detail.get("reason", ""))
            for e in events
            if e.kind == "collector_disabled"
        }
        notices = {
            e.entity: str(e.detail.get("reason", e.kind))
            for e in events
            if e.kind in ("collector_unavailable", "collector_disabled")
        }
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

    def _recent(self, cur: ReadConnection, start: float, end: float) -> dict[Key, np.ndarray]:
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
        return query_history(
            self._db, self.run.run_id, entity, metric, start, end, interval=self.run.interval
        )

    def _load_findings(self) -> list[Finding]:
        return order_findings(stored_findings(self._db, self.run.run_id)[0])

    def close(self) -> None:
        self._stop.set()
        self._callbacks.clear()
        if self._poller is not None:
            self._poller.join(timeout=5.0)
        self._db.close()


def _snapshot(
    seq: int,
    tick: int,
    prev: int | None,
    rows: Sequence[tuple],
    attrs: Mapping[str, Mapping[str, Any]],
    events: list[Event],
) -> Snapshot:
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
        ts=tick / 1e6,
        seq=seq,
        batches=batches,
        values=values,
        previous=previous,
        previous_ts=prev / 1e6 if prev is not None else None,
        entity_attrs=attrs,
        events=tuple(events),
    )
