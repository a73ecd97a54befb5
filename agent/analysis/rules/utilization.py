"""Rule 1 (accelerator starvation / low or fluctuating utilization) and rule 15 (idle reserved
accelerator). Rule ids keep their historical ``gpu`` names."""

from __future__ import annotations

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.rules.common import JOB_FILTER, by_entity, duration, job_params, pct
from agent.analysis.thresholds import (
    IDLE_RESERVED_UTIL,
    INPUT_WAIT_MODERATE,
    STARVATION_GAP_S,
    UTIL_P5,
    UTIL_P95,
)
from agent.analysis.watch import Tick

STARVATION = "gpu-starvation"
IDLE_RESERVED = "idle-reserved-gpu"


def detect_starvation(ctx: Context) -> list[Finding]:
    """Buckets where the GPU runs kernels less than 70% of the time (SageMaker's p95 band;
    critical below 10%), then a run-level check for swinging utilization (p95 high, p5 low)."""
    if not ctx.info.job_accelerators:
        return []
    episodes = ctx.episodes(
        f"SELECT entity, t, busy < {UTIL_P95} AS flag, busy AS util, busy_low AS util_low, sm "
        f"FROM aw_accel WHERE {JOB_FILTER} AND busy IS NOT NULL",
        ["util", "util_low", "sm"],
        params=job_params(ctx),
    )
    findings = []
    by_gpu = by_entity(episodes)
    for gpu, eps in by_gpu.items():
        util, idle_gaps, sm = (weighted(eps, c) for c in ("util", "util_low", "sm"))
        total = sum(e.duration_s for e in eps)
        details = [f"SM activity {pct(sm)}"] if sm is not None else []
        if idle_gaps:
            details.insert(
                0, f"{pct(idle_gaps)} of samples were idle gaps of at least {STARVATION_GAP_S} s"
            )
        findings.append(
            ctx.finding(
                STARVATION,
                "critical" if util is not None and util < UTIL_P5 else "warning",
                gpu,
                eps,
                f"{gpu} was starved: busy only {pct(util)} of the time over {duration(total)}"
                + (f" ({'; '.join(details)})." if details else "."),
                f"Find what the {ctx.info.noun([gpu])} waits on: check the data-loader, I/O and "
                "transfer findings, then "
                + (
                    ctx.info.advice("profile", [gpu])
                    or "profile one step for gaps between the device's programs"
                )
                + ".",
                {
                    "metrics": ctx.info.metrics("busy", "sm", entity=gpu),
                    "util": util,
                    "idle_sample_share": idle_gaps,
                    "sm_activity": sm,
                    "threshold": {
                        "util_below": UTIL_P95,
                        "critical_below": UTIL_P5,
                        "source": "SageMaker LowGPUUtilization; Nsight Systems gaps",
                    },
                },
                lost_fraction=1 - (util or 0.0),
            )
        )
    return findings + _fluctuating(ctx, exclude=set(by_gpu))


def _fluctuating(ctx: Context, exclude: set[str]) -> list[Finding]:
    """Busy most of the time (p95 >= 70%) but dropping to idle (p5 < 10%); the finding's
    windows are the idle dips, so a rule that explains them (checkpoints) can supersede it."""
    dips = by_entity(
        ctx.episodes(
            f"SELECT entity, t, busy < {UTIL_P5} AS flag FROM aw_accel WHERE {JOB_FILTER}",
            [],
            params=job_params(ctx),
            min_duration_s=ctx.info.bucket_s,
            gap_s=0.0,
        )
    )
    rows = ctx.rows(
        f"""SELECT entity, quantile_cont(busy, 0.95) AS p95, quantile_cont(busy, 0.05) AS p5,
                  avg(busy_low) AS idle, avg(busy) AS util, avg(sm) AS sm,
                  min(t) AS t0, max(t) AS t1
           FROM aw_accel WHERE {JOB_FILTER} AND busy IS NOT NULL GROUP BY entity
           HAVING count(*) >= 10""",
        job_params(ctx),
    )
    findings = []
    for r in rows:
        if r["entity"] in exclude:
            continue
        swinging = r["p95"] >= UTIL_P95 and r["p5"] < UTIL_P5
        if not swinging or r["idle"] < INPUT_WAIT_MODERATE or not dips.get(r["entity"]):
            continue
        findings.append(
            ctx.finding(
                STARVATION,
                "info",
                r["entity"],
                dips[r["entity"]],
                f"{r['entity']} utilization was fluctuating: p95 {pct(r['p95'])}, p5 {pct(r['p5'])}, "
                f"idle in {pct(r['idle'])} of samples.",
                "Utilization that swings between busy and idle points at stalls between steps: "
                "check data loading and synchronisation points (.item(), logging, checkpoints).",
                {
                    "metrics": ctx.info.metrics("busy", entity=r["entity"]),
                    "p95": r["p95"],
                    "p5": r["p5"],
                    "idle_sample_share": r["idle"],
                    "kind": "fluctuating",
                    "threshold": {
                        "p95_below": UTIL_P95,
                        "p5_below": UTIL_P5,
                        "source": "SageMaker Debugger LowGPUUtilization",
                    },
                },
                lost_fraction=r["idle"],
            )
        )
    return findings


def detect_idle_reserved(ctx: Context) -> list[Finding]:
    """An accelerator the job holds memory on but whose utilization stays near zero all along.

    The job's memory on it when its source attributes memory to processes; else the device's
    memory in use, when the job is known to use the device (its processes hold it: TPU chips
    are not shared) or the source cannot attribute at all (every device counts as the job's).
    """
    held = {e: c for e in ctx.info.job_accelerators if (c := _held_memory(ctx, e)) is not None}
    if not held:
        return []
    rows = ctx.rows(
        f"""SELECT entity, quantile_cont(busy, 0.95) AS p95, max(busy_max) AS peak,
                  max(job_memory) AS job_memory, max(mem_used) AS mem_used,
                  min(t) AS t0, max(t) AS t1, count(*) AS n
           FROM aw_accel WHERE {JOB_FILTER} GROUP BY entity""",
        {"accels": list(held)},
    )
    findings = []
    for r in rows:
        column = held[r["entity"]]
        memory = r[column]
        span_s = r["t1"] - r["t0"] + ctx.info.bucket_s
        if (
            r["p95"] is None
            or r["p95"] >= IDLE_RESERVED_UTIL
            or not memory
            or span_s < ctx.min_episode_s()
            or span_s < 0.5 * ctx.info.duration_s
        ):
            continue
        span = [ctx.span(r["entity"], r["t0"], r["t1"])]
        holds = (
            f"the job holds {memory / 2**30:.1f} GiB on it"
            if column == "job_memory"
            else f"{memory / 2**30:.1f} GiB of its memory are in use"
        )
        findings.append(
            ctx.finding(
                IDLE_RESERVED,
                "warning",
                r["entity"],
                span,
                f"{r['entity']} was reserved but unused: {holds}, yet its utilization stayed at "
                f"{pct(r['p95'])} (p95) for {duration(span_s)}.",
                "Check the visible devices (CUDA_VISIBLE_DEVICES, TPU_VISIBLE_CHIPS) and the "
                "device placement (a stray .cuda() or a framework initialising every device); "
                "release the device or give it work.",
                {
                    "metrics": ctx.info.metrics(column, "busy", entity=r["entity"]),
                    f"{column}_bytes": memory,
                    "util_p95": r["p95"],
                    "util_peak": r["peak"],
                    "threshold": {"util_p95_below": IDLE_RESERVED_UTIL},
                },
            )
        )
    return findings


def _held_memory(ctx: Context, entity: str) -> str | None:
    """The ``aw_accel`` column that says how much memory the job holds on ``entity``."""
    source = ctx.info.plan.source(ctx.info.sources[entity])
    if source is None:
        return None
    if "job_memory" in source.columns:
        return "job_memory" if entity in ctx.info.attributed else None
    if entity in ctx.info.attributed or not source.attributes_job:
        return "mem_used"
    return None


def watch_starvation(tick: Tick) -> bool:
    """A job accelerator below the low-utilization band (the swinging kind needs a whole
    window's quantiles: the full pass finds it)."""
    return any(v < UTIL_P95 for v in tick.accel("busy").values())


def starving(tick: Tick) -> list[str]:
    """The job accelerators below the low-utilization band at this tick (each GPU's own
    episode is what the SQL judges)."""
    return [e for e, v in tick.accel("busy").items() if v < UTIL_P95]


def watch_dips(tick: Tick) -> bool:
    """A job accelerator dipping to idle (the swinging kind: busy most of the window, idle in
    its dips); the window's quantiles are the SQL's to judge."""
    return any(v < UTIL_P5 for v in tick.accel("busy").values())


#: The swinging kind needs ten buckets of a window to judge its quantiles.
FLUCTUATING_MIN_S = 10.0


def watch_idle_reserved(tick: Tick) -> bool:
    return any(v < IDLE_RESERVED_UTIL for v in tick.accel("busy").values())


RULES = [
    Rule(
        IDLE_RESERVED,
        "Idle reserved accelerator",
        detect_idle_reserved,
        supersedes=(STARVATION, "straggler"),
        watch=watch_idle_reserved,
    ),
    Rule(
        STARVATION,
        "Accelerator starvation / low utilization",
        detect_starvation,
        watch=watch_starvation,
        entity_watch=starving,
        kind_min_duration_s=(("fluctuating", FLUCTUATING_MIN_S),),
        kind_watches=(("fluctuating", watch_dips),),
    ),
]
