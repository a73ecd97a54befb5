"""A recorded run read back at a movable time cursor (``accelwatch view``), read-only.

Implements :class:`agent.reader.Reader` over a read-only DuckDB connection; each call opens its
own cursor so frames and history can be queried from worker threads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.errors import StoreInUseError, UsageError
from agent.model import Batch, BatchBuilder, Event, RunInfo
from agent.reader import Finding, Frame, Series, epoch_seconds, order_findings, query_history
from agent.snapshot import Key, Snapshot

if TYPE_CHECKING:
    import duckdb


class RunNotFoundError(UsageError):
    """The database holds no run with that id or name."""


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

        try:
            con = connect(db_path, read_only=True)
        except StoreInUseError:
            raise StoreInUseError(
                f"{db_path} is being recorded by a running accelwatch agent; view it once the "
                "recording ends (the live screen shows it meanwhile)"
            ) from None
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
        ahead = (
            [t for t in times if t > now + 1e-6]
            if direction > 0
            else [t for t in times if t < now - 1e-6]
        )
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
        samples_so_far = cur.execute(
            "SELECT count(*) FROM samples WHERE run_id = ? AND ts <= make_timestamp(?)",
            [run_id, tick],
        ).fetchone()[0]
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

    def _recent(
        self, cur: duckdb.DuckDBPyConnection, start: float, end: float
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
            return query_history(
                cur, self.run.run_id, entity, metric, start, end, interval=self.run.interval
            )
        finally:
            cur.close()

    def _load_findings(self) -> list[Finding]:
        rows = self._con.execute(
            "SELECT rule, severity, entity, summary, evidence, next_step, start_ts, end_ts, live "
            "FROM findings WHERE run_id = ?",
            [self.run.run_id],
        ).fetchall()
        final = [r for r in rows if not r[8]]
        chosen = final or rows  # the post-run analysis supersedes what was found live
        cols = (
            "rule",
            "severity",
            "entity",
            "summary",
            "evidence",
            "next_step",
            "start_ts",
            "end_ts",
        )
        return order_findings(Finding.from_mapping(dict(zip(cols, r))) for r in chosen)

    def close(self) -> None:
        self._con.close()


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


def _find_run(con: duckdb.DuckDBPyConnection, run: str | None, db_path: str) -> RunInfo:
    where, params = ("", []) if run is None else ("WHERE run_id = ? OR name = ?", [run, run])
    row = con.execute(
        "SELECT run_id, name, pid, cmdline, cwd, host, started, interval_s, tags, env, mode, "
        f"simulated, scenario, ended, exit_code, status FROM runs {where} "
        "ORDER BY (run_id = ?) DESC, started DESC LIMIT 1",
        [*params, run or ""],
    ).fetchone()
    if row is None:
        if run is None:
            raise RunNotFoundError(f"no runs recorded in {db_path}")
        raise RunNotFoundError(
            f"no run {run!r} in {db_path} (see `accelwatch runs --db {db_path}`)"
        )
    (
        run_id,
        name,
        pid,
        cmdline,
        cwd,
        host,
        started,
        interval,
        tags,
        env,
        mode,
        simulated,
        scenario,
        ended,
        exit_code,
        status,
    ) = row
    return RunInfo(
        run_id=run_id,
        name=name,
        pid=pid,
        cmdline=list(cmdline or []),
        cwd=cwd or "",
        host=host or "",
        started=epoch_seconds(started) or time.time(),
        interval=interval or 1.0,
        db_path=str(db_path),
        tags=json.loads(tags or "{}"),
        env=json.loads(env or "{}"),
        mode=mode or "attach",
        simulated=bool(simulated),
        scenario=scenario,
        ended=epoch_seconds(ended),
        exit_code=exit_code,
        status=status or "unknown",
    )
