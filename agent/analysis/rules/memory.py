"""Rule 10: accelerator memory near capacity or steadily growing (a leak), host memory pressure."""

from __future__ import annotations

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.rules.common import JOB_FILTER, by_entity, duration, job_params, pct
from agent.analysis.rules.common import rate as rate_text
from agent.analysis.thresholds import (
    GPU_MEMORY_GROWTH,
    GPU_MEMORY_NEAR_FULL,
    HOST_MEMORY_NEAR_FULL,
    LEAK_MIN_R2,
    LEAK_MIN_SPAN_S,
    SWAP_IN_BYTES,
)
from agent.analysis.watch import Tick

GPU_MEMORY = "gpu-memory-pressure"
HOST_MEMORY = "host-memory-pressure"
GIB = 2**30
NEAR_FULL_MIN_S = 10.0  # even short spells at the ceiling risk an out-of-memory error


def detect_gpu_memory(ctx: Context) -> list[Finding]:
    if not ctx.info.job_accelerators:
        return []
    findings = []
    eps = ctx.episodes(
        f"""SELECT entity, t, mem_used / mem_total AS used_share, mem_used, mem_total,
                   mem_used >= {GPU_MEMORY_NEAR_FULL} * mem_total AS flag
            FROM aw_accel WHERE {JOB_FILTER} AND mem_total > 0""",
        ["used_share", "mem_used", "mem_total"],
        params=job_params(ctx),
        min_duration_s=max(NEAR_FULL_MIN_S, 2 * ctx.info.bucket_s),
    )
    for gpu, g_eps in by_entity(eps).items():
        share, used, total_bytes = (
            weighted(g_eps, c) for c in ("used_share", "mem_used", "mem_total")
        )
        if used is None or total_bytes is None:
            continue  # the flag compares used with total, so a flagged window has both
        findings.append(
            ctx.finding(
                GPU_MEMORY,
                "warning",
                gpu,
                g_eps,
                f"{gpu} ran at {pct(share)} of its memory ({used / GIB:.1f} of "
                f"{total_bytes / GIB:.1f} GiB) for {duration(sum(e.duration_s for e in g_eps))}: "
                "one larger batch or fragmentation away from out-of-memory.",
                ctx.info.advice("memory_full", [gpu])
                or "Leave headroom: smaller micro-batches with gradient accumulation and "
                "activation checkpointing (recomputation).",
                {
                    "metrics": ctx.info.metrics("mem_used", "mem_total", entity=gpu),
                    "used_share": share,
                    "used_bytes": used,
                    "total_bytes": total_bytes,
                    "kind": "near_capacity",
                    "threshold": {"used_share_at_least": GPU_MEMORY_NEAR_FULL},
                },
                lost_fraction=0.0,
            )
        )
    return findings + _leaks(ctx)


def _leaks(ctx: Context) -> list[Finding]:
    """Memory that grows linearly (r² >= 0.8) by > 5% of capacity (SageMaker
    GPUMemoryIncrease) over at least two minutes."""
    rows = ctx.rows(
        f"""SELECT entity, regr_slope(mem_used, t) AS slope, regr_r2(mem_used, t) AS r2,
                  arg_min(mem_used, t) AS first_used, arg_max(mem_used, t) AS last_used,
                  max(mem_total) AS total, min(t) AS t0, max(t) AS t1
           FROM aw_accel WHERE {JOB_FILTER} AND mem_used IS NOT NULL GROUP BY entity""",
        job_params(ctx),
    )
    findings = []
    for r in rows:
        span_s = r["t1"] - r["t0"]
        if not r["total"] or r["slope"] is None or span_s < LEAK_MIN_SPAN_S:
            continue
        growth = (r["last_used"] - r["first_used"]) / r["total"]
        if r["slope"] <= 0 or (r["r2"] or 0) < LEAK_MIN_R2 or growth < GPU_MEMORY_GROWTH:
            continue
        to_full_s = (r["total"] - r["last_used"]) / r["slope"]
        findings.append(
            ctx.finding(
                GPU_MEMORY,
                "warning",
                r["entity"],
                [ctx.span(r["entity"], r["t0"], r["t1"])],
                f"{r['entity']}'s memory grew steadily by {growth * 100:.0f}% of capacity "
                f"({r['slope'] * 60 / 2**20:.0f} MiB/min) over {duration(span_s)}: a leak that "
                f"fills the {ctx.info.noun([r['entity']])} in about {duration(max(0.0, to_full_s))}.",
                ctx.info.advice("memory_growth", [r["entity"]])
                or "Look for device buffers kept across steps (results accumulated in lists, "
                "growing caches); compare the device's memory profile between steps.",
                {
                    "metrics": ctx.info.metrics("mem_used", entity=r["entity"]),
                    "slope_bytes_per_s": r["slope"],
                    "r2": r["r2"],
                    "growth_share": growth,
                    "first_bytes": r["first_used"],
                    "last_bytes": r["last_used"],
                    "time_to_full_s": to_full_s,
                    "kind": "leak",
                    "threshold": {
                        "growth_share_at_least": GPU_MEMORY_GROWTH,
                        "r2_at_least": LEAK_MIN_R2,
                        "source": "SageMaker Debugger GPUMemoryIncrease",
                    },
                },
                lost_fraction=0.0,
            )
        )
    return findings


def detect_host_memory(ctx: Context) -> list[Finding]:
    """Swap-in above 1 MiB/s (the working set is being paged back in) or memory near full."""
    eps = ctx.episodes(
        f"""SELECT 'host' AS entity, t, swap_in, mem_util,
                   coalesce(swap_in, 0) >= {SWAP_IN_BYTES}
                   OR coalesce(mem_util, 0) >= {HOST_MEMORY_NEAR_FULL} AS flag FROM aw_host""",
        ["swap_in", "mem_util"],
    )
    if not eps:
        return []
    swap, used = weighted(eps, "swap_in"), weighted(eps, "mem_util")
    swapping = (swap or 0) >= SWAP_IN_BYTES
    total = sum(e.duration_s for e in eps)
    what = f"swapping in {rate_text(swap)}" if swapping else ""
    what += (" with " if swapping else "") + f"memory {pct(used)} used"
    return [
        ctx.finding(
            HOST_MEMORY,
            "critical" if swapping else "warning",
            "host",
            eps,
            f"The host ran out of memory: {what} for {duration(total)}.",
            "Reduce host memory use: fewer or lighter DataLoader workers (each copies the dataset "
            "object), memory-mapped datasets, smaller prefetch_factor; or add RAM.",
            {
                "metrics": ["host.swap.in", "host.memory.utilization"],
                "swap_in_bytes_per_s": swap,
                "memory_used_share": used,
                "threshold": {
                    "swap_in_at_least_bytes_per_s": SWAP_IN_BYTES,
                    "memory_used_at_least": HOST_MEMORY_NEAR_FULL,
                },
            },
            lost_fraction=0.5 if swapping else 0.0,
        )
    ]


def watch_near_capacity(tick: Tick) -> bool:
    used, total = tick.accel("mem_used"), tick.accel("mem_total")
    return any(v >= GPU_MEMORY_NEAR_FULL * total.get(e, float("inf")) for e, v in used.items())


def watch_growth(tick: Tick) -> bool:
    """Memory grew since the previous tick (a leak's slope is the SQL's to judge, over its
    minimum span; steps further apart than the episode gap restart the clock)."""
    used = tick.accel("mem_used")
    devices = tick.job
    before = tick.snap.previous
    return any(
        v > (before.get((e, devices[e].metric.get("mem_used", "")), v)) for e, v in used.items()
    )


def ready_leak(first: Tick, now: Tick) -> bool:
    """A leak can be reported once some device's memory grew by the rule's share of its
    capacity over the rule's span, counted from the value before the growth began (the first
    bucket the SQL's regression sees)."""
    before = first.snap.previous
    since = first.snap.previous_ts if first.snap.previous_ts is not None else first.ts
    if now.ts - since < LEAK_MIN_SPAN_S:
        return False
    used, total, start = now.accel("mem_used"), now.accel("mem_total"), first.accel("mem_used")
    for e, v in used.items():
        device = now.job[e]
        origin = before.get((e, device.metric.get("mem_used", "")), start.get(e))
        capacity = total.get(e)
        if origin is not None and capacity and v - origin >= GPU_MEMORY_GROWTH * capacity:
            return True
    return False


def watch_host_memory(tick: Tick) -> bool:
    return (tick.host("host.swap.in") or 0.0) >= SWAP_IN_BYTES or (
        tick.host("host.memory.utilization") or 0.0
    ) >= HOST_MEMORY_NEAR_FULL


RULES = [
    Rule(
        GPU_MEMORY,
        "Accelerator memory pressure",
        detect_gpu_memory,
        min_duration_s=NEAR_FULL_MIN_S,
        kind_min_duration_s=(("leak", LEAK_MIN_SPAN_S),),
        lookback_s=2 * LEAK_MIN_SPAN_S,
        watch=watch_near_capacity,
        kind_watches=(("leak", watch_growth),),
        kind_ready=(("leak", ready_leak),),
    ),
    Rule(HOST_MEMORY, "Host memory pressure", detect_host_memory, watch=watch_host_memory),
]
