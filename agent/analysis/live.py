"""Live analysis: the post-run rules, every few seconds, over the last window of a recording.

A consumer of the session (``start(session)``, ``stop()``): a daemon thread with its own
cursor analyses the last ``window_s`` seconds every ``every_s`` seconds, publishes the current
findings to ``session.live_findings`` (replaced whole) and keeps the run's live findings in the
``findings`` table (``live = true``), extending a finding while its problem lasts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import duckdb

from agent.analysis.engine import analyze
from agent.analysis.finding import SEVERITY_RANK, Finding, sort_findings, store_findings
from agent.analysis.frame import Window

if TYPE_CHECKING:
    from agent.session import Session

DEFAULT_WINDOW_S = 60.0
DEFAULT_EVERY_S = 10.0


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, timezone.utc).replace(tzinfo=None)


class LiveFindingLog:
    """Live findings of a run over time: one entry per (rule, entity) episode, extended while
    consecutive analyses keep reporting it."""

    def __init__(self, join_gap_s: float) -> None:
        self.join_gap = timedelta(seconds=join_gap_s)
        self.closed: list[Finding] = []
        self.open: dict[tuple[str, str], Finding] = {}

    def update(self, current: list[Finding]) -> list[Finding]:
        """Fold one analysis into the log; returns every live finding so far."""
        seen: dict[tuple[str, str], Finding] = {}
        for f in current:
            key = (f.rule, f.entity)
            before = self.open.get(key)
            if before is not None and f.start <= before.end + self.join_gap:
                worst = max(before.severity, f.severity, key=SEVERITY_RANK.__getitem__)
                f = replace(f, start=min(before.start, f.start), severity=worst,
                            lost_s=max(before.lost_s, f.lost_s))
            elif before is not None:
                self.closed.append(before)
            seen[key] = f
        self.closed.extend(f for key, f in self.open.items() if key not in seen)
        self.open = seen
        return sort_findings([*self.closed, *self.open.values()])

    def current(self) -> list[Finding]:
        """The findings active in the latest analysis, with the start of their episode (stable
        across analyses, so consumers can tell a lasting problem from a new one)."""
        return sort_findings(self.open.values())


class LiveAnalysis:
    """Runs the rules over the last window while a session records."""

    def __init__(self, *, window_s: float = DEFAULT_WINDOW_S, every_s: float = DEFAULT_EVERY_S
                 ) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self.session: Session | None = None
        self.cursor: duckdb.DuckDBPyConnection | None = None
        self.log = LiveFindingLog(join_gap_s=every_s + window_s)
        self.cycles = 0
        self.busy_seconds = 0.0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, session: Session) -> None:
        self.session = session
        self.cursor = session.store.cursor()
        self._thread = threading.Thread(target=self._loop, name="accelwatch-analysis",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.run_once()
            except Exception as exc:  # keep analysing; say why in the health channel
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.session is not None:
                    self.session.health["analysis.last_error"] = self.last_error

    def run_once(self, now: float | None = None) -> list[Finding]:
        """Analyse ``[now - window_s, now]`` (``now``: the latest sample time by default)."""
        session, cursor = self.session, self.cursor
        if session is None or cursor is None or session.run is None:
            return []
        if now is None:
            latest = session.hub.latest
            now = latest.ts if latest is not None else time.time()
        started = time.perf_counter()
        bucket = max(1.0, float(session.run.interval))
        window = Window(session.run.run_id, bucket, start=_utc(now - self.window_s))
        current = [f.as_live() for f in analyze(cursor, window, live=True)]
        store_findings(cursor, session.run.run_id, self.log.update(current), live=True)
        session.live_findings = [f.to_dict() for f in self.log.current()]
        self.cycles += 1
        self.busy_seconds += time.perf_counter() - started
        session.health["analysis.cycles"] = self.cycles
        session.health["analysis.findings"] = len(current)
        session.health["analysis.busy_s"] = round(self.busy_seconds, 3)
        return current
