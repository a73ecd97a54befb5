"""When a rule can first report, where its watch's clock alone would come late.

A :class:`~agent.analysis.budget.RuleClock` makes a rule due once its watch has held for the
minimum duration, then retries after 3, 6, 12 s ... Two kinds of condition need more than that,
each declared on the :class:`~agent.analysis.engine.Rule` and turned here into one planned pass
(``RuleClock.ready``), never a delay (the clock's own schedule still runs):

* ``kind_ready`` - holding is not enough: a leak must also have grown by 5% of capacity, which a
  slow leak reaches after its 60 s; checked from the tick its watch began holding.
* ``entity_watch`` - the SQL judges each entity's own episode: with eight GPUs dipping in turn
  the rule's watch holds long before any one GPU's episode is long enough. Each entity's streak
  is timed with the episodes' gap tolerance (flagged buckets at most ``bucket + gap`` apart join
  one episode), and a pass is planned the tick one has lasted the minimum and holds.

Each says so once per streak (kind) or per entity streak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.analysis.budget import ClockKey, RuleClock
from agent.analysis.engine import EntityWatch, Ready, Rule
from agent.analysis.thresholds import EPISODE_GAP_S
from agent.analysis.watch import Tick


@dataclass
class _Streak:
    since: float
    last: float
    planned: bool = False


class Readiness:
    """The rules' readiness checks and entity watches, fed one tick at a time."""

    def __init__(self, rules: Sequence[Rule], bucket_s: float, gap_s: float = EPISODE_GAP_S):
        self.bucket_s = bucket_s
        self.join_s = bucket_s + gap_s
        self._ready: dict[ClockKey, Ready] = {
            (r.id, kind): ready for r in rules for kind, ready in r.kind_ready
        }
        #: Per readiness check: the tick its clock's streak began, and whether it said so.
        self._first: dict[ClockKey, tuple[Tick, bool]] = {}
        self._entity: dict[str, tuple[EntityWatch, float]] = {
            r.id: (r.entity_watch, r.min_duration_s) for r in rules if r.entity_watch is not None
        }
        self._streaks: dict[str, dict[str, _Streak]] = {r: {} for r in self._entity}

    def observe(self, tick: Tick, clocks: Mapping[ClockKey, RuleClock]) -> list[str]:
        """Plan the passes this tick makes ready; the errors of checks that raised."""
        errors = []
        for key, ready in self._ready.items():
            try:
                self._kind(key, ready, tick, clocks.get(key))
            except Exception as exc:  # the clock's own schedule still runs the rule
                errors.append(f"ready {key[0]}: {type(exc).__name__}: {exc}")
        for rule_id, (watch, minimum) in self._entity.items():
            try:
                self._entities(rule_id, watch, minimum, tick, clocks.get((rule_id, None)))
            except Exception as exc:
                errors.append(f"entity watch {rule_id}: {type(exc).__name__}: {exc}")
        return errors

    def _kind(self, key: ClockKey, ready: Ready, tick: Tick, clock: RuleClock | None) -> None:
        if clock is None or clock.since is None:
            self._first.pop(key, None)
            return
        first, said = self._first.get(key, (None, False))
        if first is None or first.ts != clock.since:
            self._first[key] = (tick, False)
            return
        if not said and not clock.confirmed and ready(first, tick):
            self._first[key] = (first, True)
            clock.ready(tick.ts)

    def _entities(
        self,
        rule_id: str,
        watch: EntityWatch,
        minimum: float,
        tick: Tick,
        clock: RuleClock | None,
    ) -> None:
        streaks, ts = self._streaks[rule_id], tick.ts
        for entity in watch(tick):
            streak = streaks.get(entity)
            if streak is None or ts - streak.last > self.join_s:
                streak = streaks[entity] = _Streak(ts, ts)
            streak.last = ts
            if not streak.planned and ts - streak.since >= minimum - self.bucket_s:
                streak.planned = True
                if clock is not None:
                    clock.ready(ts)
        for entity in [e for e, s in streaks.items() if ts - s.last > self.join_s]:
            del streaks[entity]  # its episode ended: a new one starts a new streak
