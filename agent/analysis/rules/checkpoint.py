"""Rule 13: periodic I/O stalls - the GPUs dip idle exactly while the job writes a burst
(checkpoints, large logs), again and again."""

from __future__ import annotations

import statistics

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.rules.common import JOB_FILTER, duration, job_params, pct
from agent.analysis.rules.common import rate as rate_text
from agent.analysis.thresholds import (
    CHECKPOINT_MIN_STALLS,
    INPUT_WAIT_MODERATE,
    LOW_BUSY,
    WRITE_BURST_BYTES,
    WRITE_BURST_FACTOR,
)
from agent.analysis.watch import Tick, mean

CHECKPOINT = "checkpoint-stall"
_REGULAR_CV = 0.3  # spacing varies less than 30%: periodic


def detect_checkpoint(ctx: Context) -> list[Finding]:
    if not ctx.info.job_accelerators:
        return []
    sql = f"""
        WITH g AS (SELECT t, avg(busy) AS util FROM aw_accel
                   WHERE {JOB_FILTER} AND busy IS NOT NULL GROUP BY t),
        b AS (SELECT g.t, g.util, greatest(coalesce(h.disk_write, 0), coalesce(p.job_write, 0))
                                  AS write
              FROM g LEFT JOIN aw_host h USING (t) LEFT JOIN aw_proc p USING (t)),
        m AS (SELECT *, max(write) OVER (ORDER BY t ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING)
                        AS write_near, median(write) OVER () AS write_median FROM b)
        SELECT 'job' AS entity, t, util, write_near AS write, write_median,
               util < {LOW_BUSY} AND write_near >= greatest({WRITE_BURST_BYTES},
                                                            {WRITE_BURST_FACTOR} * write_median)
               AS flag
        FROM m"""
    eps = ctx.episodes(
        sql,
        ["util", "write", "write_median"],
        params=job_params(ctx),
        min_duration_s=2 * ctx.info.bucket_s,
        gap_s=ctx.info.bucket_s,
    )
    if len(eps) < CHECKPOINT_MIN_STALLS:
        return []
    starts = [e.start.timestamp() for e in eps]
    spacing = [b - a for a, b in zip(starts, starts[1:])]
    period = statistics.median(spacing)
    cv = statistics.pstdev(spacing) / period if period > 0 and len(spacing) > 1 else 0.0
    periodic = cv < _REGULAR_CV
    util, write = weighted(eps, "util"), weighted(eps, "write")
    stall_s = sum(e.duration_s for e in eps)
    share = stall_s / max(ctx.info.duration_s, 1e-9)
    rhythm = f"every {duration(period)}" if periodic else "at irregular intervals"
    devices = ctx.info.noun(ctx.info.job_accelerators, plural=True)
    return [
        ctx.finding(
            CHECKPOINT,
            "warning" if share >= INPUT_WAIT_MODERATE else "info",
            "job",
            eps,
            f"The {devices} stalled during {len(eps)} write bursts {rhythm} "
            f"({rate_text(write)} written, {devices} {pct(util)} busy): {duration(stall_s)} in all, {pct(share)} of the run.",
            ctx.info.advice("checkpoint")
            or "Checkpoint asynchronously (copy to host memory and write in a thread), write "
            "less often, or to faster local storage first.",
            {
                "metrics": [
                    *ctx.info.metrics("busy"),
                    "host.disk.write_bytes",
                    "process.io.write_bytes",
                ],
                "stalls": len(eps),
                "period_s": period,
                "period_cv": cv,
                "periodic": periodic,
                "util": util,
                "write_bytes_per_s": write,
                "stall_share": share,
                "threshold": {
                    "util_below": LOW_BUSY,
                    "write_at_least_bytes_per_s": WRITE_BURST_BYTES,
                    "write_vs_median_at_least": WRITE_BURST_FACTOR,
                    "source": "Nsight Systems < 50% busy chunks",
                },
            },
            lost_fraction=1 - (util or 0.0),
        )
    ]


#: Long enough to hold two stalls of a checkpoint every few minutes.
_LOOKBACK_S = 300.0


def watch_checkpoint(tick: Tick) -> bool:
    """The job's accelerators stalled (whether a write burst is near is the SQL's to judge:
    it looks one bucket either side)."""
    util = mean(tick.accel("busy").values())
    return util is not None and util < LOW_BUSY


RULES = [
    Rule(
        CHECKPOINT,
        "Checkpoint / periodic I/O stall",
        detect_checkpoint,
        supersedes=("gpu-starvation",),
        min_duration_s=2.0,
        min_episodes=CHECKPOINT_MIN_STALLS,
        lookback_s=_LOOKBACK_S,
        watch=watch_checkpoint,
    )
]
