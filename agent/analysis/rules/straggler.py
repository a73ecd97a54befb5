"""Rule 11: a straggler accelerator or rank, relative to the median of its peers.

With per-rank step times (``step.time``) two scores per rank and window, as in NVIDIA's
resiliency-ext straggler detector but against the peers' median instead of the best rank:

* relative score = peers' median step time / the rank's step time; below 0.7 is a straggler;
* individual score = the rank's own best step time / its current one, corrected for the
  whole fleet slowing down (its fast quartile's drift); below 0.85 while slower than the
  median is an emerging straggler. A rank that was always a bit slower (a persistent spread,
  e.g. a slower host) keeps its individual score near 1 and is not flagged.

Without step times the device signals stand in: a GPU whose utilization (kernel-busy share) or
SM clock (while not idle) falls below 0.7 of its peers' median while the peers are busy. SM
activity is no help here: the peers' SMs idle inside the all-reduce waiting for the straggler.
"""

from __future__ import annotations

import statistics

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.rules.common import JOB_FILTER, by_entity, duration, job_params, pct
from agent.analysis.thresholds import (
    LOW_BUSY,
    STRAGGLER_INDIVIDUAL_SCORE,
    STRAGGLER_MIN_WINDOWS,
    STRAGGLER_SCORE,
    STRAGGLER_WINDOW_S,
)
from agent.analysis.watch import Tick

STRAGGLER = "straggler"


def detect_straggler(ctx: Context) -> list[Finding]:
    if len(ctx.info.ranks) >= 3:
        return _from_steps(ctx)
    if len(ctx.info.job_accelerators) >= 3:
        return _from_devices(ctx)
    return []


def _from_steps(ctx: Context) -> list[Finding]:
    window_s = max(STRAGGLER_WINDOW_S, ctx.info.bucket_s)
    sql = f"""
        WITH s AS (SELECT *, min(t) OVER () AS t_first FROM aw_steps
                   WHERE step_time IS NOT NULL),
        w AS (  -- windows counted from the first step, so they do not depend on the clock
            SELECT entity, t_first + floor((t - t_first) / {window_s}) * {window_s} AS t,
                   sum(step_time * step_n) / sum(step_n) AS step_time
            FROM s GROUP BY ALL),
        peers AS (
            SELECT *, median(step_time) OVER (PARTITION BY t) AS peer_median,
                   quantile_cont(step_time, 0.25) OVER (PARTITION BY t) AS fast_quartile,
                   count(*) OVER (PARTITION BY t) AS ranks
            FROM w),
        scored AS (
            SELECT *, peer_median / step_time AS relative,
                   (quantile_cont(step_time, 0.1) OVER (PARTITION BY entity) / step_time)
                   / (quantile_cont(fast_quartile, 0.1) OVER () / fast_quartile) AS individual
            FROM peers WHERE ranks >= 3)
        SELECT *, relative < {STRAGGLER_SCORE}
                  OR (individual < {STRAGGLER_INDIVIDUAL_SCORE} AND relative < 1.0) AS flag
        FROM scored"""
    eps = ctx.episodes(
        sql,
        ["step_time", "peer_median", "relative", "individual"],
        min_duration_s=STRAGGLER_MIN_WINDOWS * window_s,
        gap_s=window_s,
    )
    findings = []
    for rank, r_eps in by_entity(eps).items():
        step, median, rel, ind = (
            weighted(r_eps, c) for c in ("step_time", "peer_median", "relative", "individual")
        )
        if step is None or median is None or rel is None:
            continue  # the flag needs the relative score, so a flagged window has all three
        total = sum(e.duration_s for e in r_eps)
        critical = rel < STRAGGLER_SCORE
        findings.append(
            ctx.finding(
                STRAGGLER,
                "critical" if critical else "warning",
                rank,
                r_eps,
                f"{rank} became a straggler: its steps took {step / median:.2f}x its peers' median "
                f"(relative score {rel:.2f}, {pct(None if ind is None else 1 - ind)} slower "
                f"than its own best) for "
                f"{duration(total)}; every synchronous step waits for it.",
                f"Check what changed on {rank}'s host and devices at {r_eps[0].start:%H:%M:%S}: "
                "throttling, a noisy neighbour, its data shard or disk; replace or exclude the node "
                "if it persists.",
                {
                    "metrics": ["step.time"],
                    "step_time": step,
                    "peer_median_step_time": median,
                    "relative_score": rel,
                    "individual_score": ind,
                    "signal": "step.time",
                    "threshold": {
                        "relative_score_below": STRAGGLER_SCORE,
                        "individual_score_below": STRAGGLER_INDIVIDUAL_SCORE,
                        "window_s": window_s,
                        "source": "NVIDIA resiliency-ext straggler scores",
                    },
                },
                lost_fraction=1 - (rel or 1.0),
            )
        )
    return findings


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
    findings = []
    for gpu, g_eps in by_entity(ctx.episodes(sql, cols, params=job_params(ctx))).items():
        metric_name = ctx.info.column_metric(gpu, "busy")
        v = {c: weighted(g_eps, c) for c in cols}
        score = min(x for x in (v["activity_score"], v["clock_score"]) if x is not None)
        findings.append(
            ctx.finding(
                STRAGGLER,
                "warning",
                gpu,
                g_eps,
                f"{gpu} lags its peers: score {score:.2f} of their median (busy "
                f"{pct(v['activity'])} vs {pct(v['peer_activity'])}, SM clock {v['clock_sm'] or 0:.0f}"
                f" vs {v['peer_clock'] or 0:.0f} MHz) for {duration(sum(e.duration_s for e in g_eps))}.",
                f"Find why {gpu} is slower (throttling, PCIe link, its process's input); log per-rank "
                "step times so accelwatch can confirm the straggler from step times.",
                {
                    "metrics": ctx.info.metrics("busy", "clock", entity=gpu),
                    **v,
                    "score": score,
                    "signal": metric_name,
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


def watch_straggler(tick: Tick) -> bool:
    """Device view: one of three or more busy peers lags their median (the step view reads
    imported step logs: the full pass covers it)."""
    busy = tick.accel("busy")
    if len(busy) < 3:
        return False
    peer = statistics.median(busy.values())
    clock, idle = tick.accel("clock"), tick.accel("thr_idle")
    working = {e: v for e, v in clock.items() if idle.get(e, 0.0) < 0.5}
    peer_clock = statistics.median(clock.values()) if clock else 0.0
    return peer >= LOW_BUSY and (
        any(v < STRAGGLER_SCORE * peer for v in busy.values())
        or any(v < STRAGGLER_SCORE * peer_clock for v in working.values())
    )


RULES = [Rule(STRAGGLER, "Straggler accelerator or rank", detect_straggler, watch=watch_straggler)]
