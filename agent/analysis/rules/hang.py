"""Rule 12: a hang - no progress while the job is still there.

Device view (per bucket, over the job's accelerators): every device idle (<= 2%) with the job's
processes using almost no CPU and not writing, or every device "busy" at >= 98% with no host-link
or peer-link (PCIe/NVLink) traffic and nearly empty SMs (or low power without GPM): kernels spinning in a collective that never
completes; or, on devices that report their queue (a TPU's HLO queue), programs queued that
never drain while the busy share sits flat at idle or (with the job's CPU idle) at full. Step view: no rank logged a step for max(30 s, 10x the usual step spacing).
Flagged after 30 s, so the live analysis raises it well within a minute; critical after 2 min,
long before PyTorch's NCCL watchdog (10 min by default) kills the job.
"""

from __future__ import annotations

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.rules.common import JOB_FILTER, duration, entities_text, job_params
from agent.analysis.thresholds import (
    HANG_CPU_IDLE,
    HANG_CRITICAL_S,
    HANG_IDLE_UTIL,
    HANG_MIN_S,
    HANG_QUEUE_STUCK,
    HANG_SPIN_SM,
    HANG_SPIN_UTIL,
    HANG_TRAFFIC_BYTES,
    IDLE_SAMPLE,
    NCCL_WATCHDOG_TIMEOUT_S,
    SM_ACTIVITY_LOW,
    WRITE_BURST_BYTES,
)
from agent.analysis.watch import Tick, hang_state

HANG = "hang"
_STEP_GAP_FACTOR = 10.0
#: Neutral; a source's ``advice["stacks"]`` names its own tools (NCCL flight recorder, tpu-info).
_NEXT_STEP = (
    "Dump the stacks now (`py-spy dump --pid PID` on every rank) to see which "
    "collective or lock each rank waits in; then check for a dead rank or host."
)


def detect_hang(ctx: Context) -> list[Finding]:
    findings = _from_devices(ctx) if ctx.info.job_accelerators else []
    if not findings and ctx.info.ranks:
        findings = _from_steps(ctx)
    return findings


def _from_devices(ctx: Context) -> list[Finding]:
    has_traffic = any(ctx.info.has_column(c) for c in ("host_rx", "peer_rx"))
    quiet_sm = (
        f"(sm_peak < {HANG_SPIN_SM} OR (sm_peak IS NULL AND "
        f"coalesce(power_peak, 0) < {SM_ACTIVITY_LOW}))"
    )
    spin = (
        f"(util_floor >= {HANG_SPIN_UTIL} AND traffic < {HANG_TRAFFIC_BYTES} AND {quiet_sm})"
        if has_traffic
        else "FALSE"
    )
    # A queue that holds programs and does not shrink from one bucket to the next, while
    # nothing executes, or everything "executes" with the job's processes idle.
    stuck = (
        f"""(g.queue_min >= {HANG_QUEUE_STUCK} AND g.queue_min >= coalesce(g.queue_prev, 0)
            AND (g.util_peak <= {HANG_IDLE_UTIL} OR (g.util_floor >= {HANG_SPIN_UTIL}
                 AND coalesce(p.job_cpu, 0) < {HANG_CPU_IDLE})))"""
        if ctx.info.has_column("queue")
        else "FALSE"
    )
    sql = f"""
        WITH b AS (
            SELECT t, max(busy_max) AS util_peak, min(busy_min) AS util_floor,
                   sum(coalesce(host_tx, 0) + coalesce(host_rx, 0) + coalesce(peer_tx, 0)
                       + coalesce(peer_rx, 0)) AS traffic,
                   max(sm) AS sm_peak, max(power / nullif(power_limit, 0)) AS power_peak,
                   min(queue) AS queue_min
            FROM aw_accel WHERE {JOB_FILTER} GROUP BY t),
        g AS (SELECT *, lag(queue_min) OVER (ORDER BY t) AS queue_prev FROM b)
        SELECT 'job' AS entity, g.*, p.job_cpu, h.disk_write,
               CASE WHEN g.util_peak <= {HANG_IDLE_UTIL} THEN 0.0 ELSE 1.0 END AS spinning,
               CASE WHEN {stuck} THEN 1.0 ELSE 0.0 END AS queued,
               (g.util_peak <= {HANG_IDLE_UTIL} AND coalesce(p.job_cpu, 0) < {HANG_CPU_IDLE}
                AND coalesce(h.disk_write, 0) < {WRITE_BURST_BYTES}) OR {spin} OR {stuck} AS flag
        FROM g LEFT JOIN aw_proc p USING (t) LEFT JOIN aw_host h USING (t)"""
    eps = ctx.episodes(
        sql,
        [
            "util_peak",
            "util_floor",
            "traffic",
            "sm_peak",
            "job_cpu",
            "spinning",
            "queued",
            "queue_min",
        ],
        params=job_params(ctx),
        min_duration_s=max(HANG_MIN_S, 2 * ctx.info.bucket_s),
        gap_s=ctx.info.bucket_s,
    )
    if not eps:
        return []
    spinning = (weighted(eps, "spinning") or 0) >= 0.5
    queued = (weighted(eps, "queued") or 0) >= 0.5
    longest = max(e.duration_s for e in eps)
    gpus = entities_text(ctx.info.job_accelerators)
    if queued:
        state = (
            f"{'flat at 100% busy' if spinning else 'idle at 0%'} with "
            f"{weighted(eps, 'queue_min') or 0:.0f} programs queued that never drained"
        )
    elif spinning:
        state = "stuck at 100% utilization with no PCIe/NVLink traffic (spinning in a collective)"
    else:
        state = "idle at 0% while the job's processes sat almost without CPU"
    return [
        ctx.finding(
            HANG,
            "critical" if longest >= HANG_CRITICAL_S else "warning",
            "job",
            eps,
            f"The job looks hung: all {ctx.info.noun(ctx.info.job_accelerators, plural=True)} ({gpus}) "
            f"were {state} for {duration(longest)}.",
            ctx.info.advice("stacks") or _NEXT_STEP,
            {
                "metrics": [
                    *ctx.info.metrics("busy", "host_rx", "peer_rx", "queue"),
                    "process.cpu.utilization",
                ],
                "kind": "queue_stuck" if queued else "spinning" if spinning else "idle",
                "queue": weighted(eps, "queue_min"),
                "util_peak": weighted(eps, "util_peak"),
                "traffic_bytes_per_s": weighted(eps, "traffic"),
                "job_cpu_cores": weighted(eps, "job_cpu"),
                "longest_s": longest,
                "threshold": {
                    "no_progress_for_s": HANG_MIN_S,
                    "critical_after_s": HANG_CRITICAL_S,
                    "idle_util_at_most": HANG_IDLE_UTIL,
                    "spin_util_at_least": HANG_SPIN_UTIL,
                    "idle_sample": IDLE_SAMPLE,
                    "nccl_watchdog_timeout_s": NCCL_WATCHDOG_TIMEOUT_S,
                },
            },
            lost_fraction=1.0,
        )
    ]


def _from_steps(ctx: Context) -> list[Finding]:
    """Gaps between steps of any rank, and (live) the time since the last step."""
    end = ctx.info.last.timestamp() if ctx.info.last else 0.0
    rows = ctx.rows(
        f"""
        WITH s AS (SELECT DISTINCT t FROM aw_steps WHERE step_time IS NOT NULL OR steps > 0),
        gaps AS (SELECT t, coalesce(lead(t) OVER (ORDER BY t),
                                    CASE WHEN $live THEN $end ELSE NULL END) AS next_t FROM s)
        SELECT t, next_t, next_t - t AS gap,
               greatest({HANG_MIN_S}, {_STEP_GAP_FACTOR} * median(next_t - t) OVER ()) AS limit_s
        FROM gaps WHERE next_t IS NOT NULL QUALIFY gap >= limit_s""",
        {"live": ctx.live, "end": end + ctx.info.bucket_s},
    )
    if not rows:
        return []
    eps = [
        ctx.span("job", r["t"] + ctx.info.bucket_s, r["next_t"] - ctx.info.bucket_s) for r in rows
    ]
    longest = max(r["gap"] for r in rows)
    return [
        ctx.finding(
            HANG,
            "critical" if longest >= HANG_CRITICAL_S else "warning",
            "job",
            eps,
            f"The job looks hung: no rank completed a step for {duration(longest)} "
            f"(steps usually come every {rows[0]['limit_s'] / _STEP_GAP_FACTOR:.1f} s or less).",
            ctx.info.advice("stacks") or _NEXT_STEP,
            {
                "metrics": ["step.time"],
                "kind": "no_steps",
                "longest_s": longest,
                "ranks": len(ctx.info.ranks),
                "threshold": {
                    "no_step_for_s": rows[0]["limit_s"],
                    "nccl_watchdog_timeout_s": NCCL_WATCHDOG_TIMEOUT_S,
                },
            },
            lost_fraction=1.0,
        )
    ]


def watch_hang(tick: Tick) -> bool:
    """The device condition on this tick (the step view is imported, not sampled): idle or
    spinning devices, or programs queued while nothing executes (whether the queue shrinks
    is the SQL's to judge)."""
    if hang_state(tick.snap, tick.job) is not None:
        return True
    queue, busy = tick.accel("queue"), tick.accel("busy")
    if not queue or not busy or min(queue.values()) < HANG_QUEUE_STUCK:
        return False
    idle = max(busy.values()) <= HANG_IDLE_UTIL
    pinned = min(busy.values()) >= HANG_SPIN_UTIL and sum(tick.process_cpu()) < HANG_CPU_IDLE
    return idle or pinned


RULES = [
    Rule(
        HANG,
        "Hang",
        detect_hang,
        supersedes=("gpu-starvation", "checkpoint-stall", "idle-reserved-gpu"),
        min_duration_s=HANG_MIN_S,
        watch=watch_hang,
    )
]
