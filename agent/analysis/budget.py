"""When the live analysis runs which rule: watches decide, the rules' declarations pace them.

Replaces the former CPU governor (passes as a share of the sampler's CPU, at least every 600 s),
which made the first finding come ten minutes late. A full SQL pass costs 0.1-0.3 s of CPU, so
passes stay rare, but they come when a finding can: per rule, the :class:`RuleClock` times how
long the rule's watch (``Rule.watch``) has held, tolerating the gaps the episodes tolerate, and
makes the rule due

* once the watch has held for the rule's minimum duration (less one bucket: the last flagged
  bucket counts whole), then at each longer minimum of its kinds (a leak needs 60 s) and, while
  unconfirmed, after ``LIVE_RETRY_S``, doubling up to ``LIVE_REFRESH_S``;
* at the tick a kind's own readiness (``Rule.kind_ready``) says it can be reported, when
  holding for the minimum is not enough: a leak must also have grown by 5% of capacity, which
  a slow leak reaches several seconds after its 60 s (retries alone would come 3-6 s late);
* at the tick one entity's own condition (``Rule.entity_watch``) has held for the minimum and
  holds again: eight GPUs dipping in turn keep a rule's watch holding long before any one GPU's
  episode is long enough, and retries alone (3, 6, 12 s after the first miss) came too late;
* every ``LIVE_REFRESH_S`` while a confirmed finding's watch holds (its end, evidence and
  severity move on), and never more often for that rule afterwards (a condition that comes
  and goes costs no pass per episode); when the watch stops holding, the finding closes
  without a pass;
* in the full pass every ``LIVE_FULL_PERIOD_S``: the rules without a watch, and the rules whose
  watch held (or failed, or whose ``Rule.may_find`` held) within their lookback, with the rules that explain them or they explain.
  A watch is a necessary condition of its rule's SQL flag, so a rule whose watch held at no tick
  of its lookback has no flagged bucket there and its SQL could find nothing: running it anyway
  (every rule, as before 2 Dec 2026) cost ~0.6 s of CPU in one burst every period on a healthy
  run, for no finding. ``Schedule.full_pass_every_rule`` brings the old full pass back (stress
  tests that want every statement to run).

:class:`AnalysisCost` counts what the analysis spends (its thread's CPU) for the health channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.analysis.engine import Rule
from agent.analysis.thresholds import (
    EPISODE_GAP_S,
    LIVE_FULL_PERIOD_S,
    LIVE_REFRESH_S,
    LIVE_RETRY_S,
)

#: A clock's key: the rule, and the kind its own watch times (None: the rule's main watch).
ClockKey = tuple[str, "str | None"]


@dataclass
class RuleClock:
    """One watch's state: since when it holds, and when its rule's SQL runs next.

    ``minimums`` are the seconds held at which a pass can first report (the rule's minimum
    duration, and the other minimums of kinds the same watch covers), shortest first. After a
    confirmed finding, the rule's SQL runs at most once per ``LIVE_REFRESH_S``: a condition
    that comes and goes (a GPU throttling every minute) costs no pass per episode; the finding
    closes without SQL when the watch stops (``closed``) and its next episode joins it."""

    minimums: list[float]
    since: float | None = None
    last_true: float | None = None
    confirmed: bool = False
    #: A pass is due at or after this time (None: none planned).
    due_at: float | None = None
    retry_s: float = LIVE_RETRY_S
    steps: list[float] = field(default_factory=list)
    #: The last pass that confirmed this watch's finding.
    confirmed_at: float | None = None
    #: Set when a confirmed condition ended (the caller closes its findings and clears it).
    closed: float | None = None
    #: Set when the condition came back and held its minimum while no pass may run yet: the
    #: caller reopens its last finding (the SQL confirmed it at ``confirmed_at``).
    reopened: bool = False

    def _not_before(self, at: float) -> float:
        if self.confirmed_at is None:
            return at
        return max(at, self.confirmed_at + LIVE_REFRESH_S)

    def observe(self, ts: float, holds: bool, bucket_s: float, gap_s: float) -> None:
        if holds:
            if self.since is None:
                self.since, self.retry_s = ts, LIVE_RETRY_S
                self.steps = [max(0.0, m - bucket_s) for m in self.minimums]
                self.due_at = self._not_before(self.since + self.steps.pop(0))
            self.last_true = ts
            cooling = self.confirmed_at is not None and not self.confirmed
            if (
                cooling
                and self.due_at is not None
                and ts - self.since >= self.minimums[0] - bucket_s
            ):
                self.confirmed, self.reopened = True, True  # the same problem, back again
            return
        if self.since is not None and self.last_true is not None and ts - self.last_true > gap_s:
            if self.confirmed:  # the condition ended: its finding closes, no pass needed
                self.closed = self.last_true + bucket_s
            self.since, self.confirmed, self.steps, self.due_at = None, False, [], None

    def ready(self, ts: float) -> None:
        """The rule can report now (``Rule.kind_ready``, ``Rule.entity_watch``; the caller says
        so once per streak): a pass is due now, while unconfirmed and not within a confirmed
        finding's refresh period."""
        if self.since is None or self.confirmed:
            return
        at = self._not_before(ts)
        self.due_at = at if self.due_at is None else min(self.due_at, at)

    def is_due(self, ts: float) -> bool:
        return self.due_at is not None and ts >= self.due_at

    def ran(self, ts: float, found: bool) -> None:
        """A pass with this rule ran at ``ts``; ``found``: it reported (or explained) this
        clock's kind."""
        if self.since is None:
            self.due_at = None
            return
        self.confirmed = self.confirmed or found
        if self.confirmed:
            self.confirmed_at = ts
            self.due_at = ts + LIVE_REFRESH_S
            return
        retry = ts + self.retry_s
        self.retry_s = min(LIVE_REFRESH_S, 2 * self.retry_s)
        step = self.since + self.steps.pop(0) if self.steps else retry
        self.due_at = self._not_before(min(retry, step))


def _clocks(rule: Rule) -> dict[ClockKey, RuleClock]:
    own = {kind for kind, _ in rule.kind_watches}
    kind_min = dict(rule.kind_min_duration_s)
    out: dict[ClockKey, RuleClock] = {}
    if rule.watch is not None:
        shared = [s for k, s in rule.kind_min_duration_s if k not in own]
        out[(rule.id, None)] = RuleClock(sorted({rule.min_duration_s, *shared}))
    for kind, _ in rule.kind_watches:
        out[(rule.id, kind)] = RuleClock([kind_min.get(kind, rule.min_duration_s)])
    return out


class Schedule:
    """Every watch's clock, and the full pass's."""

    def __init__(
        self,
        rules: Sequence[Rule],
        bucket_s: float,
        *,
        full_period_s: float = LIVE_FULL_PERIOD_S,
        gap_s: float = EPISODE_GAP_S,
    ) -> None:
        self.rules = list(rules)
        self.bucket_s = bucket_s
        self.full_period_s = full_period_s
        self.gap_s = gap_s
        self.clocks: dict[ClockKey, RuleClock] = {}
        for r in rules:
            self.clocks.update(_clocks(r))
        self.started: float | None = None
        self.last_full: float | None = None
        #: Run every rule in the full pass, not only the unwatched and recently held ones.
        self.full_pass_every_rule = False
        #: Per rule, the last tick any of its watches (or ``may_find``) held, or one failed.
        self.last_held: dict[str, float] = {}
        self._lookback = {r.id: r.lookback_s for r in self.rules}
        self._unwatched = frozenset(
            r.id for r in self.rules if r.watch is None and r.may_find is None
        )
        self._full_pending = False

    def observe(
        self, ts: float, holding: set[ClockKey], may_find: Iterable[str] = ()
    ) -> dict[ClockKey, float | None]:
        """Take in which watches hold at ``ts`` (and the rules that ``may_find`` otherwise: their
        ``Rule.may_find`` held or their watch failed; the full pass runs them); the confirmed conditions that ended (with when: their findings close
        there) or came back (None: their findings reopen)."""
        if self.started is None:
            self.started = ts
        last_held = self.last_held
        for rule_id, _ in holding:
            last_held[rule_id] = ts
        for rule_id in may_find:
            last_held[rule_id] = ts
        changed: dict[ClockKey, float | None] = {}
        for key, clock in self.clocks.items():
            clock.observe(ts, key in holding, self.bucket_s, self.gap_s)
            if clock.closed is not None:
                changed[key], clock.closed = clock.closed, None
            if clock.reopened:
                changed[key], clock.reopened = None, False
        return changed

    def due(self, ts: float) -> list[Rule]:
        """The rules to run now: every rule when the full pass is due; else the due ones, the
        rules that may hide their findings and the rules whose findings they may hide
        (``supersedes``), so a pass never shows a symptom its explanation would have hidden."""
        since = self.last_full if self.last_full is not None else self.started
        due = {rule_id for (rule_id, _), c in self.clocks.items() if c.is_due(ts)}
        if since is not None and ts - since >= self.full_period_s:
            if self.full_pass_every_rule:
                self._full_pending = True
                return list(self.rules)
            due |= self._full_pass(ts)
            if not due:  # nothing could find: the full pass is done without a statement
                self.last_full = ts
                return []
            self._full_pending = True
        if not due:
            return []
        chosen = due | {h for r in self.rules if r.id in due for h in r.supersedes}
        return [r for r in self.rules if r.id in chosen or chosen & set(r.supersedes)]

    def _full_pass(self, ts: float) -> set[str]:
        """The rules the full pass runs: the unwatched, and those whose watch held within
        their lookback (plus a bucket: the pass reads up to half a bucket past the tick)."""
        slack = self.bucket_s
        return set(self._unwatched) | {
            rule_id
            for rule_id, held in self.last_held.items()
            if ts - held <= self._lookback.get(rule_id, 0.0) + slack
        }

    def ran(self, ts: float, rules: Sequence[Rule], found: set[ClockKey]) -> None:
        """A pass of ``rules`` at ``ts`` reported ``found`` (rule, kind) pairs."""
        if self._full_pending or len(rules) == len(self.rules):
            self.last_full = ts
            self._full_pending = False
        ran = {r.id for r in rules}
        for key, clock in self.clocks.items():
            if key[0] not in ran:
                continue
            if key in found and clock.since is not None and not clock.confirmed:
                clock.ran(ts, True)  # a pass run for another reason confirmed it early
            elif clock.is_due(ts):
                clock.ran(ts, key in found)


@dataclass
class AnalysisCost:
    """CPU the analysis thread spent (``time.thread_time`` around each wake-up)."""

    cpu_s: float = 0.0
    passes: int = 0
    pass_cpu_s: float = 0.0
    last_pass_cpu_s: float | None = None
    started_at: float | None = None
    last_at: float | None = None

    def spent(self, now: float, cpu_s: float, *, was_pass: bool) -> None:
        if self.started_at is None:
            self.started_at = now
        self.last_at = now
        self.cpu_s += cpu_s
        if was_pass:
            self.passes += 1
            self.pass_cpu_s += cpu_s
            self.last_pass_cpu_s = cpu_s

    @property
    def share_of_core(self) -> float | None:
        """Analysis CPU per second of recording so far (1.0 = one core)."""
        if self.started_at is None or self.last_at is None or self.last_at <= self.started_at:
            return None
        return self.cpu_s / (self.last_at - self.started_at)

    def health(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "analysis.passes": self.passes,
            "analysis.cpu_s": round(self.cpu_s, 4),
        }
        if self.share_of_core is not None:
            out["analysis.cpu_share_of_core"] = round(self.share_of_core, 5)
        if self.last_pass_cpu_s is not None:
            out["analysis.pass_ms"] = round(self.last_pass_cpu_s * 1e3, 1)
        return out
