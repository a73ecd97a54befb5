"""The live analysis's CPU budget: full rule passes only as often as the sampling CPU pays for.

The issue's requirement is that incremental analysis costs under 5% of the sampling CPU. A
pass costs a roughly fixed amount of CPU (frames plus one query per rule over the last
window), so the governor spaces passes instead: it counts the analysis thread's own CPU
(``time.thread_time()`` around every wake-up, passes and hang watch alike) against the
sampler's cumulative CPU counter, and lets the next pass start only when the spend so far
plus the expected cost of one more pass (the larger of the last pass's and the smoothed
cost, plus half of it for jitter; before the first pass, ``LIVE_FIRST_PASS_CPU_S``) stays
within the share. Passes are never closer than ``min_period_s`` and never further apart than
``max_period_s`` (even over budget, so findings stay at most that stale). Without a sampler
CPU counter there is no budget, and passes run every ``min_period_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.analysis.thresholds import (
    LIVE_CPU_SHARE,
    LIVE_FIRST_PASS_CPU_S,
    LIVE_MAX_PERIOD_S,
    LIVE_MIN_PERIOD_S,
)

#: Weight of the latest pass in the expected cost of the next one.
_COST_SMOOTHING = 0.3
#: Headroom on that expectation: on a shared machine a pass can cost a third more CPU than the
#: last one (cache and memory-bandwidth contention), and the share must hold anyway.
_COST_MARGIN = 1.5


@dataclass
class CpuBudget:
    """Cumulative analysis CPU against cumulative sampling CPU, both from one start."""

    share: float = LIVE_CPU_SHARE
    min_period_s: float = LIVE_MIN_PERIOD_S
    max_period_s: float = LIVE_MAX_PERIOD_S
    analysis_cpu_s: float = 0.0
    sampling_cpu_s: float | None = None
    started_at: float | None = None
    last_pass_at: float | None = None
    period_s: float | None = None
    pass_cost_s: float | None = None
    first_pass_cpu_s: float = LIVE_FIRST_PASS_CPU_S
    passes: int = 0

    def sampled(self, now: float, sampling_cpu_s: float | None) -> None:
        """The sampler's CPU spent since analysis started (None: no counter, no budget)."""
        if self.started_at is None:
            self.started_at = now
        self.sampling_cpu_s = sampling_cpu_s

    def charge(self, cpu_s: float) -> None:
        """Analysis CPU spent outside passes (the hang watch)."""
        self.analysis_cpu_s += cpu_s

    def ran_pass(self, now: float, cpu_s: float) -> None:
        """A full pass that started at ``now`` cost ``cpu_s``."""
        self.analysis_cpu_s += cpu_s
        if self.last_pass_at is not None:
            self.period_s = now - self.last_pass_at
        self.last_pass_at = now
        self.passes += 1
        self.pass_cost_s = (
            cpu_s
            if self.pass_cost_s is None
            else max(cpu_s, (1 - _COST_SMOOTHING) * self.pass_cost_s + _COST_SMOOTHING * cpu_s)
        )

    @property
    def cpu_share(self) -> float | None:
        """Analysis CPU / sampling CPU so far (None until sampling CPU is known)."""
        if not self.sampling_cpu_s:
            return None
        return self.analysis_cpu_s / self.sampling_cpu_s

    def affordable(self) -> bool:
        """Whether one more pass keeps the cumulative share within the budget."""
        if self.sampling_cpu_s is None:
            return True
        cost = self.first_pass_cpu_s if self.pass_cost_s is None else self.pass_cost_s
        expected = _COST_MARGIN * cost
        return self.analysis_cpu_s + expected <= self.share * self.sampling_cpu_s

    def due(self, now: float) -> bool:
        """Whether the next scheduled pass should run at ``now``."""
        if self.started_at is None:
            return False
        since = now - (self.last_pass_at if self.last_pass_at is not None else self.started_at)
        if since < self.min_period_s:
            return False
        return since >= self.max_period_s or self.affordable()

    def health(self) -> dict[str, float | int]:
        """What the governor publishes in ``session.health`` (``analysis.*``)."""
        out: dict[str, float | int] = {
            "analysis.passes": self.passes,
            "analysis.cpu_s": round(self.analysis_cpu_s, 4),
        }
        if self.cpu_share is not None:
            out["analysis.cpu_share"] = round(self.cpu_share, 4)
        if self.period_s is not None:
            out["analysis.period_s"] = round(self.period_s, 1)
        if self.pass_cost_s is not None:
            out["analysis.pass_ms"] = round(self.pass_cost_s * 1e3, 1)
        return out
