"""Live, a symptom waits (a bounded while) for the cause that may explain it.

Cause and symptom rules need the same 30 s, but a symptom's condition often starts first: the
GPUs starve as soon as an NFS server slows, while the mount's latency needs a few seconds more
to look slow. Shown as found, the live list would lead with ``gpu-starvation`` and only later
say why. So a new symptom finding is held back while a rule that explains it (in
:data:`agent.analysis.causes.EXPLAINS` or its ``supersedes``) has a watch that holds and has
not been confirmed yet, and can reach its minimum duration before the symptom must show: until
that cause's own latency target (its watch's onset + its minimum duration +
``LIVE_LATENCY_SLACK_S``) has passed, and never past the symptom's own target less one bucket
(its onset + its minimum duration + the slack), so a symptom still shows within its latency.
A cause that could not be ready in time (a checkpoint stall needing two episodes behind
fluctuating starvation) holds nothing. A cause that confirms ends the hold at once (and groups
or hides the symptom).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone

from agent.analysis.budget import ClockKey, RuleClock
from agent.analysis.causes import EXPLAINS
from agent.analysis.engine import Rule
from agent.analysis.finding import Finding
from agent.analysis.thresholds import LIVE_LATENCY_SLACK_S


def explainers(rules: Sequence[Rule]) -> dict[str, list[str]]:
    """Symptom rule → the rules that may explain it."""
    out: dict[str, list[str]] = {}
    for r in rules:
        for symptom in {*EXPLAINS.get(r.id, ()), *r.supersedes}:
            out.setdefault(symptom, []).append(r.id)
    return out


def _epoch(ts: datetime) -> float:
    return ts.replace(tzinfo=timezone.utc).timestamp()


def held_back(
    findings: Iterable[Finding],
    now: float,
    rules: Mapping[str, Rule],
    causes_of: Mapping[str, list[str]],
    clocks: Mapping[ClockKey, RuleClock],
    bucket_s: float,
) -> list[Finding]:
    """``findings`` without the symptoms still waiting for a cause (see the module)."""
    shown = list(findings)
    found = {f.rule for f in shown}
    out = []
    for f in shown:
        causes = causes_of.get(f.rule, ())
        if causes and not any(c in found for c in causes):
            rule = rules.get(f.rule)
            own = rule.min_duration_for(f) if rule is not None else 0.0
            latest = _epoch(f.start) + own + LIVE_LATENCY_SLACK_S - bucket_s
            if now < latest and _a_cause_may_come(causes, now, latest, rules, clocks):
                continue
        out.append(f)
    return out


def _a_cause_may_come(
    causes: Iterable[str],
    now: float,
    latest: float,
    rules: Mapping[str, Rule],
    clocks: Mapping[ClockKey, RuleClock],
) -> bool:
    """A cause whose watch holds, unconfirmed, that can reach its minimum duration before the
    symptom must show (``latest``) and is still within its own latency target."""
    for cause in causes:
        clock, rule = clocks.get((cause, None)), rules.get(cause)
        if clock is None or rule is None or clock.since is None or clock.confirmed:
            continue
        ready = clock.since + rule.min_duration_s
        if ready <= latest and now < ready + LIVE_LATENCY_SLACK_S:
            return True
    return False
