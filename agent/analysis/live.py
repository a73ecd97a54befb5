"""Live analysis: the post-run rules over the last window of a recording, within a CPU budget.

A consumer of the session (``start(session)``, ``stop()``): a daemon thread with its own
cursor wakes every second. It feeds the latest snapshot to the hang watch (a few look-ups per
GPU) and runs a full rule pass over the last ``window_s`` seconds when the CPU governor
(:class:`~agent.analysis.budget.CpuBudget`) allows one, or at once when the hang watch says
the hang rule's condition has held long enough. A pass publishes the current findings to
``context.findings`` (published whole) and keeps the run's live findings in the
``findings`` table (``live = true``), extending a finding while its problem lasts.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import duckdb

from agent.analysis.budget import CpuBudget
from agent.analysis.engine import analyze
from agent.analysis.finding import SEVERITY_RANK, Finding, sort_findings, store_findings
from agent.analysis.frame import Window
from agent.analysis.rules.hang import HANG
from agent.analysis.thresholds import LIVE_CPU_SHARE, LIVE_MAX_PERIOD_S, LIVE_MIN_PERIOD_S
from agent.analysis.watch import HangWatch
from agent.registry import default_registry

if TYPE_CHECKING:
    from agent.context import LiveContext

DEFAULT_WINDOW_S = 60.0
DEFAULT_EVERY_S = LIVE_MIN_PERIOD_S
#: The shortest window a pass degrades to when DuckDB runs out of memory.
MIN_WINDOW_S = 10.0
#: How often the analysis thread wakes to read the latest snapshot (and maybe run a pass).
POLL_S = 1.0


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
            # An open finding (no end yet) lasts until now, so a later one continues it.
            before_end = f.start if before is None or before.end is None else before.end
            if before is not None and f.start <= before_end + self.join_gap:
                worst = max(before.severity, f.severity, key=SEVERITY_RANK.__getitem__)
                f = replace(
                    f,
                    start=min(before.start, f.start),
                    severity=worst,
                    lost_s=max(before.lost_s, f.lost_s),
                )
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
    """Runs the rules over the last window while a session records, within a CPU budget.

    ``every_s`` is the shortest period between full passes, ``max_every_s`` the longest and
    ``cpu_share`` the budget (analysis CPU / sampling CPU). ``clock`` paces the governor and
    ``cpu_clock`` measures the analysis's own CPU (the calling thread's); tests replace both.
    """

    def __init__(
        self,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        every_s: float = DEFAULT_EVERY_S,
        max_every_s: float = LIVE_MAX_PERIOD_S,
        cpu_share: float = LIVE_CPU_SHARE,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self.context: LiveContext | None = None
        self.cursor: duckdb.DuckDBPyConnection | None = None
        self.log = LiveFindingLog(join_gap_s=max_every_s + window_s)
        self.budget = CpuBudget(cpu_share, every_s, max_every_s)
        self.watch = HangWatch()
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.cycles = 0
        self.urgent_passes = 0
        self.busy_seconds = 0.0
        self.last_error: str | None = None
        #: Passes that ran out of DuckDB memory (each halves ``window_s``, down to MIN_WINDOW_S).
        self.oom_passes = 0
        self._seen_seq = -1
        self._sampling_base: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Find the sources now: discovery is a one-time cost no pass should be charged for.
        default_registry().load()

    def start(self, context: LiveContext) -> None:
        self.context = context
        self.cursor = context.cursor()
        self._thread = threading.Thread(target=self._loop, name="accelwatch-analysis", daemon=True)
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
        while not self._stop.wait(min(POLL_S, self.every_s)):
            self.poll_safely()

    def poll_safely(self) -> None:
        """One wake-up that never raises. Out of memory (the agent's DuckDB is capped, and the
        recording's own writes come first) halves the window instead of failing every pass;
        a cursor killed by the store reopening its database is replaced."""
        try:
            self.poll()
        except duckdb.OutOfMemoryException:
            self.oom_passes += 1
            self.window_s = max(MIN_WINDOW_S, self.window_s / 2)
            if self.context is not None:
                self.context.publish_health(
                    **{"analysis.oom_passes": self.oom_passes, "analysis.window_s": self.window_s}
                )
        except Exception as exc:  # keep analysing; say why in the health channel
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.context is not None:
                self.context.publish_health(**{"analysis.last_error": self.last_error})
                if isinstance(exc, (duckdb.FatalException, duckdb.ConnectionException)):
                    with contextlib.suppress(Exception):
                        self.cursor = self.context.cursor()

    def sampling_cpu(self) -> float | None:
        """Sampler CPU seconds since this analysis started (None without a sampler)."""
        total = None if self.context is None else self.context.sampler_cpu_seconds()
        if total is None:
            return None
        if self._sampling_base is None:
            self._sampling_base = total
        return total - self._sampling_base

    def poll(self, now: float | None = None) -> list[Finding] | None:
        """One wake-up: watch the latest snapshot; run a pass if urgent or within budget.

        Returns the pass's findings, or None when no pass ran. All CPU spent here is charged
        to the budget."""
        context = self.context
        if context is None or self.cursor is None:
            return None
        cpu_started = self.cpu_clock()
        now = self.clock() if now is None else now
        snap = context.hub.latest
        if snap is not None and snap.seq != self._seen_seq:
            self._seen_seq = snap.seq
            self.watch.observe(snap)
        self.budget.sampled(now, self.sampling_cpu())
        urgent = snap is not None and self.watch.due(snap.ts)
        if not urgent and not self.budget.due(now):
            self.budget.charge(self.cpu_clock() - cpu_started)
            context.publish_health(**self.budget.health())
            return None
        current: list[Finding] = []
        try:
            current = self.run_once(None if snap is None else snap.ts)
        finally:  # a failed pass counts too, so a broken store is not retried every second
            if urgent and snap is not None:
                self.urgent_passes += 1
                self.watch.triggered(snap.ts, any(f.rule == HANG for f in current))
            self.budget.ran_pass(now, self.cpu_clock() - cpu_started)
            context.publish_health(**self.budget.health())
        context.publish_health(**{"analysis.urgent_passes": self.urgent_passes})
        return current

    def run_once(self, now: float | None = None) -> list[Finding]:
        """Analyse ``[now - window_s, now]`` (``now``: the latest sample time by default)."""
        context, cursor = self.context, self.cursor
        if context is None or cursor is None:
            return []
        if now is None:
            latest = context.hub.latest
            now = latest.ts if latest is not None else time.time()
        started = time.perf_counter()
        bucket = max(1.0, float(context.interval))
        window = Window(context.run.run_id, bucket, start=_utc(now - self.window_s))
        current = [f.as_live() for f in analyze(cursor, window, live=True)]
        store_findings(cursor, context.run.run_id, self.log.update(current), live=True)
        context.publish_findings([f.to_dict() for f in self.log.current()])
        self.cycles += 1
        self.busy_seconds += time.perf_counter() - started
        context.publish_health(
            **{
                "analysis.cycles": self.cycles,
                "analysis.findings": len(current),
                "analysis.busy_s": round(self.busy_seconds, 3),
            }
        )
        return current
