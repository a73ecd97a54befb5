"""Live analysis: the post-run rules over the recent window of a recording, when they can find.

A consumer of the session (``start(context)``, ``stop()``). The sampler thread only appends each
snapshot to a queue (a hub subscriber); a daemon thread wakes every second, takes the new
snapshots into the in-memory recent window (:mod:`agent.analysis.recent`), evaluates every
rule's watch on each of them (:mod:`agent.analysis.watch`, no SQL) and runs the SQL of the rules
the :class:`~agent.analysis.budget.Schedule` says are due, over each rule's lookback, on the
in-memory window. So a finding appears about one bucket after its rule's minimum duration has
passed since the condition's onset, and the analysis costs little more than the watches: a pass
runs when a watch has held long enough, while a finding lasts (every ``LIVE_REFRESH_S``), and
every ``LIVE_FULL_PERIOD_S`` for the rules without a watch and those whose watch held within
their lookback (:mod:`agent.analysis.budget`). Time is the snapshots' time (the sampler's clock), so
tests drive it with simulated ticks.

A pass publishes the current findings to ``context.findings`` (published whole) and keeps the
run's live findings in the ``findings`` table (``live = true``), extending a finding while its
problem lasts.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import duckdb

from agent.analysis.budget import AnalysisCost, ClockKey, Schedule
from agent.analysis.engine import Rule, analyze, finding_kind
from agent.analysis.finding import SEVERITY_RANK, Finding, sort_findings, store_findings
from agent.analysis.frame import Window
from agent.analysis.hold import explainers, held_back
from agent.analysis.readiness import Readiness
from agent.analysis.recent import RecentWindow
from agent.analysis.thresholds import LIVE_FULL_PERIOD_S, LIVE_REFRESH_S
from agent.analysis.watch import Tick
from agent.analysis.watch_arrays import TickArrays
from agent.registry import default_registry
from agent.snapshot import Snapshot

if TYPE_CHECKING:
    from agent.context import LiveContext

#: The longest window a pass reads (each rule reads its ``lookback_s``, at most this).
DEFAULT_WINDOW_S = 600.0
#: The shortest window a pass degrades to when DuckDB runs out of memory.
MIN_WINDOW_S = 10.0
#: How often the analysis thread wakes to take in the new snapshots (and maybe run a pass):
#: every tick's watches still run, two ticks to a wake-up (a thread's wake-up cost the agent
#: about as much as a tick's watches: an A/B of two whole agents, 5 x 60 s, aw-analysis
#: 0.170 -> 0.137 % of a core, lower in every window); a finding shows at most 1 s later.
POLL_S = 2.0
#: Snapshots queued for the analysis thread at most (it fell behind: the oldest are dropped).
MAX_QUEUED = 600


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, timezone.utc).replace(tzinfo=None)


class LiveFindingLog:
    """Live findings of a run over time: one entry per (rule, entity) episode, extended while
    consecutive analyses keep reporting it."""

    def __init__(self, join_gap_s: float) -> None:
        self.join_gap = timedelta(seconds=join_gap_s)
        self.closed: list[Finding] = []
        self.open: dict[tuple[str, str], Finding] = {}

    def update(self, current: list[Finding], covered: Iterable[str] | None = None) -> list[Finding]:
        """Fold one analysis of the rules ``covered`` (all: None) into the log; returns every
        live finding so far. Open findings of rules the analysis did not run stay open."""
        rules = None if covered is None else set(covered)
        seen: dict[tuple[str, str], Finding] = {
            key: f for key, f in self.open.items() if rules is not None and f.rule not in rules
        }
        for f in current:
            key = (f.rule, f.entity)
            before = self.open.get(key) or self._recently_closed(f)
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

    def _recently_closed(self, f: Finding) -> Finding | None:
        """The closed finding ``f`` continues (same rule and entity, within the join gap),
        taken out of the closed ones; None if there is none."""
        for i in range(len(self.closed) - 1, -1, -1):
            c = self.closed[i]
            if (c.rule, c.entity) == (f.rule, f.entity) and c.end is not None:
                if f.start <= c.end + self.join_gap:
                    return self.closed.pop(i)
                return None
        return None

    def close(self, which: Callable[[Finding], bool], end: datetime) -> None:
        """End the open findings ``which`` selects at ``end`` (their condition stopped)."""
        for key, f in list(self.open.items()):
            if which(f):
                self.closed.append(replace(f, end=max(f.start, end)))
                del self.open[key]

    def reopen(self, which: Callable[[Finding], bool]) -> None:
        """Open again the latest closed finding of each (rule, entity) ``which`` selects."""
        latest: dict[tuple[str, str], int] = {}
        for i, f in enumerate(self.closed):
            if which(f) and (f.rule, f.entity) not in self.open:
                latest[(f.rule, f.entity)] = i
        for key, i in sorted(latest.items(), key=lambda kv: -kv[1]):
            self.open[key] = replace(self.closed.pop(i), end=None)

    def all(self) -> list[Finding]:
        return sort_findings([*self.closed, *self.open.values()])

    def current(self) -> list[Finding]:
        """The findings active in the latest analysis, with the start of their episode (stable
        across analyses, so consumers can tell a lasting problem from a new one)."""
        return sort_findings(self.open.values())


class LiveAnalysis:
    """Runs the rules over the recent window while a session records, when watches say so.

    ``window_s`` caps how far back a pass reads (rules read their ``lookback_s``; out of memory
    halves the cap); ``full_period_s`` is how often every rule runs; ``rules`` defaults to every
    rule; ``cpu_clock`` measures the analysis's own CPU (the calling thread's).
    """

    def __init__(
        self,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        full_period_s: float = LIVE_FULL_PERIOD_S,
        rules: Sequence[Rule] | None = None,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        from agent.analysis.rules import ALL_RULES

        self.rules: tuple[Rule, ...] = tuple(ALL_RULES if rules is None else rules)
        self._by_id = {r.id: r for r in self.rules}
        self._causes_of = explainers(self.rules)
        self._holding = False  # a symptom is being held back (agent.analysis.hold)
        self.window_s = window_s
        self.full_period_s = full_period_s
        self.context: LiveContext | None = None
        self.cursor: duckdb.DuckDBPyConnection | None = None
        self.recent: RecentWindow | None = None
        self.schedule: Schedule | None = None
        self.readiness: Readiness | None = None
        longest = max((r.lookback_s for r in self.rules), default=60.0)
        self.log = LiveFindingLog(join_gap_s=LIVE_REFRESH_S + longest)
        self.cost = AnalysisCost()
        self.cpu_clock = cpu_clock
        self.cycles = 0
        self.busy_seconds = 0.0
        self.last_error: str | None = None
        self.watch_errors = 0
        #: Passes that ran out of DuckDB memory (each halves ``window_s``, down to MIN_WINDOW_S).
        self.oom_passes = 0
        #: Snapshots dropped because the analysis thread fell behind.
        self.dropped = 0
        self._queue: deque[Snapshot] = deque()
        self._subscribed = False
        self._seen_seq = -1
        self._seen_accels: frozenset[str] = frozenset()
        self._last_arrays: TickArrays | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Find the sources now: discovery is a one-time cost no pass should be charged for.
        default_registry().load()

    # -- lifecycle
    def attach(self, context: LiveContext, *, subscribe: bool = True) -> None:
        """Bind to a recording without starting the thread (tests call ``poll`` themselves)."""
        self.context = context
        self.cursor = context.cursor()
        bucket = max(1.0, float(context.interval))
        keep = max((r.lookback_s for r in self.rules), default=60.0) + 2 * bucket
        self.recent = RecentWindow(
            context.run.run_id, keep_s=min(keep, self.window_s + bucket), open_cursor=context.cursor
        )
        self.schedule = Schedule(self.rules, bucket, full_period_s=self.full_period_s)
        self.readiness = Readiness(self.rules, bucket)
        if subscribe:
            context.hub.subscribe(self._queued)
            self._subscribed = True

    def start(self, context: LiveContext) -> None:
        self.attach(context)
        self._thread = threading.Thread(target=self._loop, name="accelwatch-analysis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.context is not None and self._subscribed:
            self.context.hub.unsubscribe(self._queued)
            self._subscribed = False
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None
        if self.recent is not None:
            self.recent.close()
            self.recent = None

    def _queued(self, snap: Snapshot) -> None:
        """Hub subscriber, on the sampler thread: O(1), never blocks."""
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(snap)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self.poll_safely()

    # -- one wake-up
    def poll_safely(self) -> None:
        """One wake-up that never raises. Out of memory (the in-memory window is capped like
        the agent's DuckDB) halves the window instead of failing every pass; a cursor killed by
        the store reopening its database is replaced."""
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

    def _take_new(self) -> list[Snapshot]:
        if self._subscribed:
            taken = []
            while self._queue:
                taken.append(self._queue.popleft())
            return taken
        latest = None if self.context is None else self.context.hub.latest
        if latest is None or latest.seq == self._seen_seq:
            return []
        self._seen_seq = latest.seq
        return [latest]

    def observe(self, snap: Snapshot) -> set[ClockKey]:
        """Take one tick into the window and the rules' clocks; the rules whose watch holds."""
        assert self.recent is not None and self.schedule is not None
        tick = Tick(snap, self._seen_accels, self._last_arrays)
        arrays = tick.arrays
        self.recent.add(snap, None if arrays is None else arrays.now)
        holding: set[ClockKey] = set()
        may_find: list[str] = []
        for rule in self.rules:
            if rule.may_find is not None:
                try:
                    if rule.may_find(tick):
                        may_find.append(rule.id)
                except Exception as exc:  # only its SQL can tell: the full pass runs it
                    may_find.append(rule.id)
                    self.watch_errors += 1
                    self.last_error = f"may_find {rule.id}: {type(exc).__name__}: {exc}"
            watches = [(None, rule.watch), *rule.kind_watches]
            for kind, watch in watches:
                if watch is None:
                    continue
                try:
                    if watch(tick):
                        holding.add((rule.id, kind))
                except Exception as exc:  # a broken watch leaves its rule to the full pass
                    may_find.append(rule.id)
                    self.watch_errors += 1
                    self.last_error = f"watch {rule.id}: {type(exc).__name__}: {exc}"
        self._seen_accels = self._seen_accels | frozenset(tick.devices)
        self._last_arrays = arrays
        # The run's first tick has no rates and no between-samples metrics (GPM's SM activity)
        # yet, so the SQL cannot flag its bucket where they count: it starts no clock of a rule
        # that needs its condition to last (else a pass due a bucket early misses, and its
        # retry comes 3 s late); an instant one (an XID at start) still counts.
        first = snap.previous_ts is None
        if first:
            clocks, bucket = self.schedule.clocks, self.schedule.bucket_s
            holding = {k for k in holding if k in clocks and clocks[k].minimums[0] <= bucket}
        ended = self.schedule.observe(snap.ts, holding, may_find)
        if not first and self.readiness is not None:
            for error in self.readiness.observe(tick, self.schedule.clocks):
                self.watch_errors += 1
                self.last_error = error
        if ended:
            self._close(ended)
        return holding

    def _close(self, changed: dict[ClockKey, float | None]) -> None:
        """Findings whose watch stopped holding end where it last held; those whose watch
        came back within the refresh period reopen. No SQL either way."""
        for (rule_id, kind), end in changed.items():
            own = {k for k, _ in self._by_id[rule_id].kind_watches}

            def which(
                f: Finding, r: str = rule_id, k: str | None = kind, o: set[str] = own
            ) -> bool:
                found = finding_kind(f)
                return f.rule == r and (found == k if k is not None else found not in o)

            if end is None:
                self.log.reopen(which)
            else:
                self.log.close(which, _utc(end))
        if self.context is not None:
            self.context.publish_findings(self._shown())
            if self.cursor is not None:
                store_findings(self.cursor, self.context.run.run_id, self.log.all(), live=True)

    def _shown(self) -> list[dict]:
        """The current findings to publish: a symptom waits a bounded while for its cause
        (:mod:`agent.analysis.hold`)."""
        current = self.log.current()
        if self.schedule is not None and self.recent is not None and self.recent.latest:
            shown = held_back(current, self.recent.latest, self._by_id, self._causes_of,
                              self.schedule.clocks, self.schedule.bucket_s)  # fmt: skip
            self._holding = len(shown) < len(current)
            current = shown
        return [f.to_dict() for f in current]

    def poll(self) -> list[Finding] | None:
        """Take in the new snapshots and run the rules that are due; their findings, or None
        when no pass ran. All CPU spent here is counted in ``analysis.cpu_s``."""
        if self.context is None or self.recent is None or self.schedule is None:
            return None
        cpu_started = self.cpu_clock()
        for snap in self._take_new():
            self.observe(snap)
        if self._holding:  # a held symptom shows once its wait is over, pass or not
            self.context.publish_findings(self._shown())
        now = self.recent.latest
        due = [] if now is None else self.schedule.due(now)
        if not due or now is None:
            self.cost.spent(now or 0.0, self.cpu_clock() - cpu_started, was_pass=False)
            return None
        current: list[Finding] = []
        try:
            current = self.run_once(now, due)
        finally:  # a failed pass counts too, so a broken store is not retried every second
            self.schedule.ran(now, due, self._found(current, due))
            self.cost.spent(now, self.cpu_clock() - cpu_started, was_pass=True)
            self.context.publish_health(
                **self.cost.health(), **{"analysis.watch_errors": self.watch_errors}
            )
        return current

    def _found(self, findings: Sequence[Finding], ran: Sequence[Rule]) -> set[ClockKey]:
        """(rule, kind) of each finding, the kind only if the rule watches it on its own; a
        rule a found rule supersedes counts as found (its condition is explained, so its
        watch needs no retries)."""
        out: set[ClockKey] = set()
        for f in findings:
            rule = self._by_id.get(f.rule)
            own = {k for k, _ in rule.kind_watches} if rule else set()
            kind = finding_kind(f)
            out.add((f.rule, kind if kind in own else None))
        explained = {h for f in findings if (r := self._by_id.get(f.rule)) for h in r.supersedes}
        out |= {(r.id, None) for r in ran if r.id in explained}
        return out

    def run_once(
        self, now: float | None = None, rules: Sequence[Rule] | None = None
    ) -> list[Finding]:
        """Run ``rules`` (all by default) over the recent window up to ``now`` (the latest
        tick by default), each reading at most its lookback."""
        context, recent = self.context, self.recent
        if context is None or recent is None:
            return []
        chosen = list(self.rules if rules is None else rules)
        now = recent.latest if now is None else now
        if now is None or not chosen:
            return []
        started = time.perf_counter()
        bucket = max(1.0, float(context.interval))
        lookback = min(self.window_s, max(r.lookback_s for r in chosen))
        recent.load(now - lookback, now + bucket / 2)
        window = Window(context.run.run_id, bucket, start=_utc(now - lookback))
        try:
            current = [f.as_live() for f in analyze(recent.con, window, live=True, rules=chosen)]
        finally:
            recent.release()
        found = self.log.update(current, covered=None if rules is None else [r.id for r in chosen])
        if self.cursor is not None:
            store_findings(self.cursor, context.run.run_id, found, live=True)
        context.publish_findings(self._shown())
        self.cycles += 1
        self.busy_seconds += time.perf_counter() - started
        context.publish_health(
            **{
                "analysis.cycles": self.cycles,
                "analysis.findings": len(self.log.current()),
                "analysis.busy_s": round(self.busy_seconds, 3),
                "analysis.window_s": self.window_s,
            }
        )
        return current
