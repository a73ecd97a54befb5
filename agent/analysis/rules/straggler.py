"""Rule 11: stragglers, as operators see them (scores in :mod:`agent.analysis.straggler_scores`).

Four views, each its own finding:

* ``straggler`` - an **emerging** straggler: a rank that starts running slower than its peers
  *and* than its own usual speed, flagged from when it started (hysteresis finds the onset),
  even for a few minutes. In a **synchronous** job (all ranks' step times equal) an op trace
  finds the rank whose forward/backward compute is slower than its pipeline stage's
  (:mod:`agent.analysis.straggler_ops`); without one, the device signals stand in: a GPU whose
  busy share or SM clock falls below 0.7 of its peers' median while they are busy.
* ``rank-spread`` - a **persistent** spread: ranks slower (or faster) than their peers from the
  start, one finding naming the groups rather than one "straggler" per slow rank.
* ``rank-speed-change`` - a rank whose own series steps to another speed mid-run (a change
  point relative to its past and its peers), e.g. on top of a persistent spread.

Live, ``straggler`` and ``rank-spread`` have watches over the tick's step times (a rank off
its peers' median, :mod:`agent.analysis.rules.straggler_watch`); ``rank-speed-change`` needs a
rank's own history, longer than a live window, so it is post-run only (it reports nothing live).
The persistent view is in :mod:`agent.analysis.rules.straggler_spread`, the wording every view
shares in :mod:`agent.analysis.rules.straggler_text`; the emerging, op-trace, device and
speed-change views and the rules' declarations are here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.analysis.engine import Context, Episode, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.frame import naive_utc
from agent.analysis.rules.common import JOB_FILTER, by_entity, duration, job_params, pct
from agent.analysis.rules.straggler_spread import RANK_SPREAD, detect_spread
from agent.analysis.rules.straggler_text import (
    SCORE_SOURCE,
    cost_text,
    slower,
    span_offsets,
    time_axis,
)
from agent.analysis.rules.straggler_watch import (
    never_live,
    steps_reported,
    watch_spread,
    watch_straggler,
)
from agent.analysis.straggler_changes import speed_changes
from agent.analysis.straggler_ops import has_ops, slow_compute
from agent.analysis.straggler_scores import RankWindows, islands, rank_windows
from agent.analysis.thresholds import (
    CHANGE_MIN,
    CHANGE_MIN_WINDOWS,
    CHANGE_T,
    LOW_BUSY,
    OPS_SCORE,
    STRAGGLER_INDIVIDUAL_SCORE,
    STRAGGLER_MIN_WINDOWS,
    STRAGGLER_ONSET_SCORE,
    STRAGGLER_SCORE,
)

STRAGGLER = "straggler"
SPEED_CHANGE = "rank-speed-change"


def detect_straggler(ctx: Context) -> list[Finding]:
    rw = rank_windows(ctx)
    findings: list[Finding] = []
    if rw is not None and not rw.synchronous:
        findings += _emerging(ctx, rw)
    ops = [] if ctx.live or not has_ops(ctx) else _from_ops(ctx)
    findings += ops
    if (rw is None or rw.synchronous) and not ops and len(ctx.info.job_accelerators) >= 3:
        findings += _from_devices(ctx)
    return findings


# -- emerging stragglers -------------------------------------------------------------------


def emerging_episodes(rw: RankWindows) -> list[tuple[int, int, int]]:
    """(row, first, last window) of each emerging straggler episode, history included."""
    rel, dev = rw.rel, rw.dev
    with np.errstate(invalid="ignore"):
        strong = (rel > 1 / STRAGGLER_INDIVIDUAL_SCORE) & (dev > 1 / STRAGGLER_INDIVIDUAL_SCORE)
        weak = (rel > 1.0) & (dev > 1 / STRAGGLER_ONSET_SCORE)
    rows, c0, c1 = islands(weak | strong, max_gap=1)
    counts = np.cumsum(np.pad(strong, ((0, 0), (1, 0))), axis=1)
    n_strong = counts[rows, c1 + 1] - counts[rows, c0]
    # Most of an episode is strongly slow: a long mildly-slow stretch (a speed change) with a
    # couple of noisy windows over the line is not an emerging straggler.
    enough = np.maximum(STRAGGLER_MIN_WINDOWS, 0.5 * (c1 - c0 + 1))
    keep = (n_strong >= enough) & (c1 >= rw.first_analysed)
    return list(zip(rows[keep].tolist(), c0[keep].tolist(), c1[keep].tolist()))


def _episode(rw: RankWindows, row: int, c0: int, c1: int, **values: Any) -> Episode:
    """Windows ``c0..c1`` of a rank (live: its start may lie in the history, where it began).

    A boundary window only partly slow is cut where the slowdown began (ended): its excess
    over the peers is the episode's typical excess times the slow share of the window."""
    start, end = float(rw.starts[c0]), float(rw.ends[c1])
    typical = values["rel"] - 1
    if typical > 0 and c1 > c0:
        with np.errstate(invalid="ignore"):
            head = (rw.rel[row, c0] - 1) / typical
            tail = (rw.rel[row, c1] - 1) / typical
        if np.isfinite(head) and head < 1:
            start = float(rw.ends[c0]) - max(0.0, head) * (rw.ends[c0] - rw.starts[c0])
        if np.isfinite(tail) and tail < 1:
            end = float(rw.starts[c1]) + max(0.0, tail) * (rw.ends[c1] - rw.starts[c1])
    return Episode(rw.ranks[row], naive_utc(start), naive_utc(end), c1 - c0 + 1, values)


def _emerging(ctx: Context, rw: RankWindows) -> list[Finding]:
    axis = time_axis(ctx)
    by_rank: dict[int, list[Episode]] = {}
    for row, c0, c1 in emerging_episodes(rw):
        sl = slice(c0, c1 + 1)
        # the scores of the windows inside the episode: its first and last are partly slow
        inner = slice(c0 + 1, c1) if c1 - c0 >= 2 else sl
        rel_w, dev_w = rw.rel[row, inner], rw.dev[row, inner]
        lost = float(np.nansum((1 - 1 / rw.rel[row, sl]) * (rw.ends[sl] - rw.starts[sl])))
        by_rank.setdefault(row, []).append(
            _episode(
                rw,
                row,
                c0,
                c1,
                rel=float(np.nanmedian(rel_w)),
                dev=float(np.nanmedian(dev_w)),
                step_time=float(np.nanmean(rw.x[row, inner])),
                peer_step_time=float(np.nanmean(rw.level[row, inner])),
                lost_s=max(0.0, lost),
            )
        )
    out = []
    for row, eps in by_rank.items():
        rank = rw.ranks[row]
        rel, dev = weighted(eps, "rel") or 1.0, weighted(eps, "dev") or 1.0
        total = sum(e.duration_s for e in eps)
        lost = sum(e.values["lost_s"] for e in eps)
        when = axis.span(eps[0].start, eps[-1].end)
        more = f" in {len(eps)} episodes" if len(eps) > 1 else ""
        out.append(
            ctx.finding(
                STRAGGLER,
                "critical" if 1 / rel < STRAGGLER_SCORE else "warning",
                rank,
                eps,
                f"{rank} became a straggler {when} ({duration(total)}{more}): its steps ran "
                f"{slower(rel)} and {slower(dev, 'its own usual speed')} (relative score "
                f"{1 / rel:.2f}, individual score {1 / dev:.2f}); "
                f"{cost_text(lost, ctx.info.duration_s)}.",
                f"Check what changed on {rank}'s host and accelerator at "
                f"{axis.at(eps[0].start)}: throttling, a noisy neighbour, its data shard or "
                "disk; replace or exclude the node if it persists.",
                {
                    "metrics": ["step.time"],
                    "kind": "emerging",
                    "signal": "step.time",
                    "step_time": weighted(eps, "step_time"),
                    "peer_median_step_time": weighted(eps, "peer_step_time"),
                    "slower_than_peers": rel - 1,
                    "relative_score": 1 / rel,
                    "individual_score": 1 / dev,
                    **span_offsets(axis, eps[0].start, eps[-1].end),
                    "work_lost_s": lost / len(rw.ranks),
                    "threshold": {
                        "relative_score_below": STRAGGLER_INDIVIDUAL_SCORE,
                        "individual_score_below": STRAGGLER_INDIVIDUAL_SCORE,
                        "onset_individual_score_below": STRAGGLER_ONSET_SCORE,
                        "critical_relative_score_below": STRAGGLER_SCORE,
                        "min_windows": STRAGGLER_MIN_WINDOWS,
                        "window_s": rw.window_s,
                        "source": SCORE_SOURCE,
                    },
                },
                lost_fraction=lost / total if total else 0.0,
            )
        )
    return out


# -- speed changes -------------------------------------------------------------------------


def detect_speed_change(ctx: Context) -> list[Finding]:
    rw = rank_windows(ctx)
    if rw is None or rw.synchronous or ctx.live:
        return []  # live windows are too short for a rank's own history to show a step
    emerging = np.zeros(rw.x.shape, dtype=bool)
    for row, c0, c1 in emerging_episodes(rw):
        emerging[row, c0 : c1 + 1] = True
    axis = time_axis(ctx)
    min_len = max(CHANGE_MIN_WINDOWS, int(np.ceil(120.0 / rw.window_s)))
    out = []
    for ch in speed_changes(rw.rel, min_len=min_len, min_change=CHANGE_MIN, min_t=CHANGE_T):
        if emerging[ch.row, ch.first : ch.last + 1].mean() >= 0.5:
            continue  # already told as an emerging straggler
        rank = rw.ranks[ch.row]
        ep = Episode(rank, naive_utc(rw.starts[ch.first]), naive_utc(rw.ends[ch.last]), 0, {})
        slowed = ch.ratio > 1
        lost = ep.duration_s * (1 - 1 / ch.ratio) if slowed else 0.0
        verb = "slowed down" if slowed else "sped up"
        out.append(
            ctx.finding(
                SPEED_CHANGE,
                "warning" if slowed else "info",
                rank,
                [ep],
                f"{rank} {verb} at {axis.at(ep.start)} and stayed so until {axis.at(ep.end)}: "
                f"from {slower(ch.before)} to {slower(ch.after)}, "
                f"{slower(ch.ratio, 'its own earlier speed')}"
                + (f"; {cost_text(lost, ctx.info.duration_s)}." if lost else "."),
                f"Look at what changed on {rank} at {axis.at(ep.start)} (a restart, a "
                "throttling clock, a new neighbour, a bigger data shard).",
                {
                    "metrics": ["step.time"],
                    "kind": "speed_change",
                    "signal": "step.time",
                    "before_vs_peers": ch.before,
                    "after_vs_peers": ch.after,
                    "vs_own_past": ch.ratio,
                    "t_statistic": ch.t_stat,
                    **span_offsets(axis, ep.start, ep.end),
                    "threshold": {
                        "change_at_least": CHANGE_MIN,
                        "t_statistic_at_least": CHANGE_T,
                        "min_windows": min_len,
                    },
                },
                lost_fraction=(1 - 1 / ch.ratio) if slowed else 0.0,
            )
        )
    return out


# -- synchronous jobs: op traces, else devices ---------------------------------------------


def _from_ops(ctx: Context) -> list[Finding]:
    axis = time_axis(ctx)
    out = []
    for s in slow_compute(ctx):
        entity = f"rank{s.rank}"
        ep = Episode(entity, naive_utc(s.start), naive_utc(s.end), 0, {})
        where = (
            f" (stage {s.stage}" + (f", dp rank {s.dp_rank})" if s.dp_rank is not None else ")")
            if s.stage is not None
            else ""
        )
        ops = sorted(s.by_optype.items(), key=lambda kv: -kv[1])
        detail = ", ".join(f"{op} {slower(r, 'its peers')}" for op, r in ops[:3])
        ratio = s.comp / s.peers
        out.append(
            ctx.finding(
                STRAGGLER,
                "critical" if s.score < STRAGGLER_SCORE else "warning",
                entity,
                [ep],
                f"{entity}{where} is the straggler of this synchronous job in steps "
                f"{s.first_step}-{s.last_step} ({axis.span(ep.start, ep.end)}): its "
                f"forward/backward compute ran {slower(ratio, 'the median of its stage peers')}"
                f" ({s.peer_count} other ranks of its stage; {detail}); "
                f"{cost_text(s.lost_s, s.job_s, synchronous=True)}.",
                f"Check {entity}'s accelerator (clocks, throttling, ECC, PCIe link) and host; "
                "its compute, not its data or network, is slow.",
                {
                    "metrics": ["op_trace"],
                    "kind": "compute",
                    "signal": "op_trace",
                    "stage": s.stage,
                    "dp_rank": s.dp_rank,
                    "steps": [s.first_step, s.last_step],
                    "compute_s": s.comp,
                    "peer_median_compute_s": s.peers,
                    "slower_than_peers": ratio - 1,
                    "relative_score": s.score,
                    "by_optype": s.by_optype,
                    "job_lost_share": s.lost_s / s.job_s if s.job_s else None,
                    **span_offsets(axis, ep.start, ep.end),
                    "threshold": {"compute_score_below": OPS_SCORE, "source": SCORE_SOURCE},
                },
                lost_fraction=s.lost_s / ep.duration_s if ep.duration_s else 0.0,
            )
        )
    return out


def _from_devices(ctx: Context) -> list[Finding]:
    sql = f"""
        WITH g AS (
            SELECT entity, t, busy AS activity,
                   CASE WHEN coalesce(thr_idle, 0) < 0.5 THEN clock END AS clock_sm,
                   median(busy) OVER (PARTITION BY t) AS peer_activity,
                   median(clock) OVER (PARTITION BY t) AS peer_clock
            FROM aw_accel WHERE {JOB_FILTER} AND busy IS NOT NULL)
        SELECT *, activity / nullif(peer_activity, 0) AS activity_score,
               clock_sm / nullif(peer_clock, 0) AS clock_score,
               peer_activity >= {LOW_BUSY} AND (activity < {STRAGGLER_SCORE} * peer_activity
                   OR clock_sm < {STRAGGLER_SCORE} * peer_clock) AS flag
        FROM g"""
    cols = ["activity", "peer_activity", "activity_score", "clock_score", "clock_sm", "peer_clock"]
    axis = time_axis(ctx)
    findings = []
    for gpu, g_eps in by_entity(ctx.episodes(sql, cols, params=job_params(ctx))).items():
        metric_name = ctx.info.column_metric(gpu, "busy")
        v = {c: weighted(g_eps, c) for c in cols}
        score = min(x for x in (v["activity_score"], v["clock_score"]) if x is not None)
        total = sum(e.duration_s for e in g_eps)
        findings.append(
            ctx.finding(
                STRAGGLER,
                "warning",
                gpu,
                g_eps,
                f"{gpu} lags its peers {axis.span(g_eps[0].start, g_eps[-1].end)} "
                f"({duration(total)}): score {score:.2f} of their median (busy "
                f"{pct(v['activity'])} vs {pct(v['peer_activity'])}, SM clock "
                f"{v['clock_sm'] or 0:.0f} vs {v['peer_clock'] or 0:.0f} MHz); "
                f"{cost_text(total * (1 - score), ctx.info.duration_s)}.",
                f"Find why {gpu} is slower (throttling, PCIe link, its process's input); log per-rank "
                "step times (or import an op trace) so accelwatch can confirm the straggler.",
                {
                    "metrics": ctx.info.metrics("busy", "clock", entity=gpu),
                    **v,
                    "kind": "device",
                    "score": score,
                    "signal": metric_name,
                    **span_offsets(axis, g_eps[0].start, g_eps[-1].end),
                    "threshold": {
                        "score_below": STRAGGLER_SCORE,
                        "peers_busy_at_least": LOW_BUSY,
                        "source": "NVIDIA resiliency-ext straggler score 0.7",
                    },
                },
                lost_fraction=1 - score,
            )
        )
    return findings


RULES: Sequence[Rule] = [
    Rule(STRAGGLER, "Straggler rank or accelerator", detect_straggler, watch=watch_straggler),
    Rule(
        RANK_SPREAD,
        "Persistent spread between ranks",
        detect_spread,
        watch=watch_spread,
        may_find=steps_reported,
    ),
    Rule(SPEED_CHANGE, "Rank changed speed", detect_speed_change, may_find=never_live),
]
