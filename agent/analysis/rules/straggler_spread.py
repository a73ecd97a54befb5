"""Rule 11's persistent view: ranks slower (or faster) than their peers from the start.

One ``rank-spread`` finding names the groups (slower / typical / faster than the median of
their peers), rather than one "straggler" per slow rank (:mod:`agent.analysis.rules.straggler`
has the emerging view and the rules' declarations).
"""

from __future__ import annotations

import numpy as np

from agent.analysis.engine import Context, Episode
from agent.analysis.finding import Finding
from agent.analysis.frame import naive_utc
from agent.analysis.rules.common import pct
from agent.analysis.rules.straggler_text import (
    SCORE_SOURCE,
    cost_text,
    percent_range,
    ranks_text,
    span_offsets,
    time_axis,
    value_text,
)
from agent.analysis.straggler_scores import RankWindows, nanmedian, rank_windows
from agent.analysis.thresholds import SPREAD_BAND, STRAGGLER_SCORE

RANK_SPREAD = "rank-spread"


def spread_levels(rw: RankWindows) -> tuple[np.ndarray, np.ndarray]:
    """Each rank's typical step time over its peers' (the median of the other ranks' median
    step times, as an operator reads it off the trace), and the same over the first quarter
    of the windows (relative to the peers' level), to tell "from the start"."""
    med = np.array([rw.medians.get(r, np.nan) for r in rw.ranks])
    if len(med) <= 2000:  # leave-one-out: the median of *its peers*
        others = np.where(np.eye(len(med), dtype=bool), np.nan, med[None, :])
        peers = nanmedian(others, 1)
    else:
        peers = np.full(len(med), float(nanmedian(med[None, :], 1)[0]))
    with np.errstate(invalid="ignore", divide="ignore"):
        whole = med / peers
    _, start = rw.persistent()
    return whole, np.where(np.isfinite(start), start, whole)


def spread_groups(rw: RankWindows) -> dict[str, list[int]]:
    """Rows per group: slower / typical / faster than the peers, over the run and its start."""
    whole, start = spread_levels(rw)
    slow = (whole >= 1 + SPREAD_BAND) & (start >= 1 + SPREAD_BAND)
    fast = (whole <= 1 - SPREAD_BAND) & (start <= 1 - SPREAD_BAND)
    typical = np.isfinite(whole) & ~slow & ~fast
    return {
        "slower": np.flatnonzero(slow).tolist(),
        "typical": np.flatnonzero(typical).tolist(),
        "faster": np.flatnonzero(fast).tolist(),
    }


def detect_spread(ctx: Context) -> list[Finding]:
    rw = rank_windows(ctx)
    if rw is None or rw.synchronous:
        return []
    groups = spread_groups(rw)
    if not groups["slower"] and not groups["faster"]:
        return []
    axis = time_axis(ctx)
    whole, _ = spread_levels(rw)
    names = {g: [rw.ranks[i] for i in rows] for g, rows in groups.items()}
    c0 = rw.first_analysed
    span = Episode("job", naive_utc(rw.starts[c0]), naive_utc(rw.ends[-1]), 0, {})
    parts = []
    if names["slower"]:
        one = len(names["slower"]) == 1
        level = percent_range([whole[i] for i in groups["slower"]], "slower")
        whose = "its" if one else "their"
        parts.append(
            f"{ranks_text(names['slower'])} {'is' if one else 'are'} {level} than the median "
            f"of {whose} peers"
        )
    if names["typical"]:
        parts.append(f"{ranks_text(names['typical'])} within {pct(SPREAD_BAND)} of it")
    if names["faster"]:
        verb = "is" if len(names["faster"]) == 1 else "are"
        parts.append(
            f"{ranks_text(names['faster'])} {verb} "
            f"{percent_range([whole[i] for i in groups['faster']], 'faster')}"
        )
    medians = {r: rw.medians[r] for r in rw.ranks if r in rw.medians}
    lo, hi = min(medians, key=medians.__getitem__), max(medians, key=medians.__getitem__)
    worst = float(np.nanmax(whole)) if names["slower"] else 1.0
    lost = span.duration_s * (1 - 1 / worst) if worst > 1 else 0.0
    cost = f"; {cost_text(lost, ctx.info.duration_s)}" if lost else ""
    severity = "warning" if names["slower"] else "info"
    if names["slower"] and 1 / worst < STRAGGLER_SCORE:
        severity = "critical"
    summary = (
        f"Ranks run at persistently different speeds {axis.span(span.start, span.end)}: "
        f"{'; '.join(parts)}. Per-rank median step times range from {value_text(medians[lo])} "
        f"({lo}) to {value_text(medians[hi])} ({hi}){cost}."
    )
    return [
        ctx.finding(
            RANK_SPREAD,
            severity,  # type: ignore[arg-type]
            "job",
            [span],
            summary,
            f"Compare the hosts of {ranks_text(names['slower'] or names['faster'])} with the "
            "others (GPU model and clocks, CPU and NUMA binding, network path, data shard "
            "sizes); in synchronous training every rank waits for the slowest group.",
            {
                "metrics": ["step.time"],
                "kind": "persistent",
                "signal": "step.time",
                "groups": names,
                "slower_than_peers": {
                    rw.ranks[i]: round(float(whole[i]) - 1, 4)
                    for i in range(len(rw.ranks))
                    if np.isfinite(whole[i])
                },
                "rank_median_step_time": medians,
                **span_offsets(axis, span.start, span.end),
                "threshold": {"band": SPREAD_BAND, "source": SCORE_SOURCE},
            },
            lost_fraction=(1 - 1 / worst) if worst > 1 else 0.0,
        )
    ]
