"""Runtime-evidence rules, first met on TPUs: input-bound (the device queue runs empty),
host <-> device transfer bound, and collective / cross-slice (DCN) latency bound.

They read roles only: the device queue (``accelerator.queue.size``, column ``queue``), the
busy share (a TPU's duty cycle) and the latency roles of ``agent/catalog/roles.py``, so any
accelerator whose source declares them is analysed alike. Each applies only when its evidence
was recorded (a GPU run without a queue or latency roles keeps the GPU rules' findings).
Each declares its minimum duration below (``MIN_DURATION_S``).
"""

from __future__ import annotations

from agent.analysis.engine import Context, Episode, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.rules import tpu_latency
from agent.analysis.rules.common import JOB_FILTER, duration, entities_text, job_params, pct
from agent.analysis.thresholds import (
    BUSY,
    COLLECTIVE_P99_HIGH_S,
    CPU_SATURATED,
    DCN_P99_HIGH_S,
    INPUT_WAIT_HIGH,
    LOADER_PROCESS_SATURATED,
    MIN_EPISODE_S,
    QUEUE_EMPTY,
    TRANSFER_P99_HIGH_S,
    TRANSFER_TIME_SHARE,
)
from agent.analysis.watch import Tick, mean
from agent.catalog.roles import latency_role

INPUT_BOUND = "input-bound"
TRANSFER_BOUND = "transfer-latency-bound"
COLLECTIVE_BOUND = "collective-latency-bound"
#: How long each condition must hold to become a finding (live and post-run alike).
MIN_DURATION_S = {
    INPUT_BOUND: MIN_EPISODE_S,
    TRANSFER_BOUND: MIN_EPISODE_S,
    COLLECTIVE_BOUND: MIN_EPISODE_S,
}

#: Per bucket, over the job's accelerators: mean busy share (duty cycle) and queued programs.
_JOB = f"""SELECT t, avg(busy) AS duty, avg(queue) AS queue FROM aw_accel
           WHERE {JOB_FILTER} AND busy IS NOT NULL GROUP BY t"""

_INPUT_DEFAULT = (
    "Feed the devices faster: prefetch batches on the host with more input workers, cache "
    "decoded data, and put the next batch on the device while the current step runs."
)
_TRANSFER_DEFAULT = (
    "Move less between host and device: keep data resident in device memory, transfer once "
    "per step in large buffers overlapped with compute, and avoid reading results back to the "
    "host inside the step."
)
_COLLECTIVE_DEFAULT = (
    "Cut cross-slice traffic: keep only data-parallel reductions across slices (model-parallel "
    "axes inside a slice), overlap collectives with compute, reduce less often (gradient "
    "accumulation), and check the data-centre network path."
)


def _devices(ctx: Context) -> str:
    job = ctx.info.job_accelerators
    return f"{ctx.info.noun(job, plural=True)} ({entities_text(job)})"


def _min_s(ctx: Context, rule: str) -> float:
    return ctx.min_episode_s(MIN_DURATION_S[rule])


def detect_input_bound(ctx: Context) -> list[Finding]:
    """The devices wait (idle >= 20%, XProf's "highly input bound") while their queue runs
    empty, or while the host's input workers or CPUs are saturated."""
    if not ctx.info.job_accelerators or not ctx.info.has_column("queue"):
        return []
    eps = ctx.episodes(
        f"""SELECT 'job' AS entity, g.t, g.duty, 1 - g.duty AS idle, g.queue,
                   p.worker_cpu_max, p.workers, h.cpu,
                   CASE WHEN g.queue <= {QUEUE_EMPTY} THEN 1.0 ELSE 0.0 END AS empty,
                   1 - g.duty >= {INPUT_WAIT_HIGH} AND (g.queue <= {QUEUE_EMPTY}
                       OR coalesce(p.worker_cpu_max, 0) >= {LOADER_PROCESS_SATURATED}
                       OR coalesce(h.cpu, 0) >= {CPU_SATURATED}) AS flag
            FROM ({_JOB}) g LEFT JOIN aw_proc p USING (t) LEFT JOIN aw_host h USING (t)""",
        ["duty", "idle", "queue", "worker_cpu_max", "workers", "cpu", "empty"],
        params=job_params(ctx),
        min_duration_s=_min_s(ctx, INPUT_BOUND),
    )
    if not eps:
        return []
    idle, queue, wmax, cpu, empty = (
        weighted(eps, c) for c in ("idle", "queue", "worker_cpu_max", "cpu", "empty")
    )
    idle = idle or 0.0
    causes = []
    if (empty or 0) >= 0.5:
        causes.append(f"their program queue ran empty ({queue or 0:.1f} queued on average)")
    if wmax is not None and wmax >= LOADER_PROCESS_SATURATED:
        causes.append(f"the input workers were saturated ({wmax:.2f} cores at most)")
    elif cpu is not None and cpu >= CPU_SATURATED:
        causes.append(f"the host CPU was at {pct(cpu)}")
    total = sum(e.duration_s for e in eps)
    return [
        ctx.finding(
            INPUT_BOUND,
            "critical" if idle >= 0.5 else "warning",
            "job",
            eps,
            f"The job is input-bound: the {_devices(ctx)} sat idle {pct(idle)} of the time for "
            f"{duration(total)} while {' and '.join(causes) or 'their queue ran empty'}.",
            ctx.info.advice("input") or _INPUT_DEFAULT,
            {
                "metrics": [
                    *ctx.info.metrics("busy", "queue"),
                    "host.cpu.utilization",
                    "process.cpu.utilization",
                ],
                "idle_share": idle,
                "queue": queue,
                "queue_empty_share": empty,
                "loader_cpu_max_cores": wmax,
                "host_cpu": cpu,
                "threshold": {
                    "idle_at_least": INPUT_WAIT_HIGH,
                    "queue_at_most": QUEUE_EMPTY,
                    "loader_cores_at_least": LOADER_PROCESS_SATURATED,
                    "host_cpu_at_least": CPU_SATURATED,
                    "min_duration_s": MIN_DURATION_S[INPUT_BOUND],
                    "source": "XProf input-pipeline bands",
                },
            },
            lost_fraction=idle,
        )
    ]


def _latency_episodes(ctx: Context, flag: str, evidence: list[str], rule: str) -> list[Episode]:
    return ctx.episodes(
        f"""SELECT 'job' AS entity, g.t, g.duty, 1 - g.duty AS idle, l.*  EXCLUDE (t),
                   {flag} AS flag
            FROM ({_JOB}) g JOIN {tpu_latency.TABLE} l USING (t)""",
        ["duty", "idle", *evidence],
        params=job_params(ctx),
        min_duration_s=_min_s(ctx, rule),
    )


def detect_transfer_bound(ctx: Context) -> list[Finding]:
    """The devices wait while host <-> device transfers are slow (p99 >= 2 ms) and dominate:
    they take half the wall time (rate x median), or, without counts, longer than a program."""
    if not ctx.info.job_accelerators or not tpu_latency.build(ctx):
        return []
    slow = f"greatest(coalesce(h2d_p99, 0), coalesce(d2h_p99, 0)) >= {TRANSFER_P99_HIGH_S}"
    share = "coalesce(h2d_rate * h2d_p50, 0) + coalesce(d2h_rate * d2h_p50, 0)"
    longer = "greatest(coalesce(h2d_p50, 0), coalesce(d2h_p50, 0)) >= exec_p50"
    dominate = (
        f"(({share}) >= {TRANSFER_TIME_SHARE} OR "
        f"(h2d_rate IS NULL AND d2h_rate IS NULL AND coalesce({longer}, FALSE)))"
    )
    flag = f"1 - g.duty >= {INPUT_WAIT_HIGH} AND {slow} AND {dominate}"
    ev = ["h2d_p50", "h2d_p99", "d2h_p50", "d2h_p99", "h2d_rate", "d2h_rate", "exec_p50"]
    eps = _latency_episodes(ctx, flag, ev, TRANSFER_BOUND)
    if not eps:
        return []
    v = {c: weighted(eps, c) for c in ["idle", *ev]}
    idle = v["idle"] or 0.0
    time_share = (v["h2d_rate"] or 0) * (v["h2d_p50"] or 0) + (v["d2h_rate"] or 0) * (
        v["d2h_p50"] or 0
    )
    total = sum(e.duration_s for e in eps)
    worst = "h2d" if (v["h2d_p99"] or 0) >= (v["d2h_p99"] or 0) else "d2h"
    direction = "host → device" if worst == "h2d" else "device → host"
    return [
        ctx.finding(
            TRANSFER_BOUND,
            "critical" if idle >= 0.5 else "warning",
            "job",
            eps,
            f"The job is transfer-bound: the {_devices(ctx)} sat idle {pct(idle)} of the time for "
            f"{duration(total)} while {direction} transfers took {_ms(v[worst + '_p50'])} "
            f"(p99 {_ms(v[worst + '_p99'])})"
            + (f", transfers occupying {pct(time_share)} of the time." if time_share else "."),
            ctx.info.advice("transfer") or _TRANSFER_DEFAULT,
            {
                "metrics": [
                    *ctx.info.metrics("busy"),
                    *tpu_latency.evidence_metrics(["h2d_p99", "d2h_p99", "h2d_rate", "d2h_rate"]),
                ],
                "idle_share": idle,
                "transfer_time_share": time_share or None,
                **{f"{k}_s" if "rate" not in k else f"{k}_per_s": v[k] for k in ev},
                "threshold": {
                    "idle_at_least": INPUT_WAIT_HIGH,
                    "transfer_p99_at_least_s": TRANSFER_P99_HIGH_S,
                    "transfer_time_share_at_least": TRANSFER_TIME_SHARE,
                    "min_duration_s": MIN_DURATION_S[TRANSFER_BOUND],
                },
            },
            lost_fraction=idle,
        )
    ]


def detect_collective_bound(ctx: Context) -> list[Finding]:
    """Multi-slice jobs (the runtime reports cross-slice latencies): the duty cycle drops
    below busy while DCN transfers (p99 >= 5 ms) or collectives (p99 >= 10 ms) are slow."""
    if not ctx.info.job_accelerators or not tpu_latency.build(ctx):
        return []
    slow = (
        f"(coalesce(dcn_p99, 0) >= {DCN_P99_HIGH_S} "
        f"OR coalesce(collective_p99, 0) >= {COLLECTIVE_P99_HIGH_S})"
    )
    flag = f"g.duty < {BUSY} AND {slow}"
    ev = ["dcn_p50", "dcn_p99", "collective_p50", "collective_p99"]
    eps = _latency_episodes(ctx, flag, ev, COLLECTIVE_BOUND)
    if not eps:
        return []
    v = {c: weighted(eps, c) for c in ["duty", "idle", *ev]}
    idle = v["idle"] or 0.0
    total = sum(e.duration_s for e in eps)
    parts = []
    if v["collective_p99"] is not None:
        parts.append(
            f"collectives took {_ms(v['collective_p50'])} (p99 {_ms(v['collective_p99'])})"
        )
    if v["dcn_p99"] is not None:
        parts.append(f"cross-slice (DCN) transfers {_ms(v['dcn_p50'])} (p99 {_ms(v['dcn_p99'])})")
    return [
        ctx.finding(
            COLLECTIVE_BOUND,
            "critical" if idle >= 0.5 else "warning",
            "job",
            eps,
            f"The multi-slice job is collective-latency-bound: the {_devices(ctx)} were busy "
            f"only {pct(v['duty'])} for {duration(total)} while {' and '.join(parts)}.",
            ctx.info.advice("collective") or _COLLECTIVE_DEFAULT,
            {
                "metrics": [
                    *ctx.info.metrics("busy"),
                    *tpu_latency.evidence_metrics(["dcn_p99", "collective_p99"]),
                ],
                "duty": v["duty"],
                **{f"{k}_s": v[k] for k in ev},
                "threshold": {
                    "duty_below": BUSY,
                    "dcn_p99_at_least_s": DCN_P99_HIGH_S,
                    "collective_p99_at_least_s": COLLECTIVE_P99_HIGH_S,
                    "min_duration_s": MIN_DURATION_S[COLLECTIVE_BOUND],
                },
            },
            lost_fraction=idle,
        )
    ]


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _job_duty_and_queue(tick: Tick) -> tuple[float | None, float | None]:
    return mean(tick.accel("busy").values()), mean(tick.accel("queue").values())


def watch_input_bound(tick: Tick) -> bool:
    """Waiting devices that have a program queue (as the SQL requires): a GPU's starvation is
    not this rule's, and holding there would keep ``dataloader-bound`` waiting for it."""
    if not tick.has_column("queue"):
        return False
    duty, queue = _job_duty_and_queue(tick)
    if duty is None or 1 - duty < INPUT_WAIT_HIGH:
        return False
    return (
        (queue is not None and queue <= QUEUE_EMPTY)
        or max(tick.process_cpu("worker"), default=0.0) >= LOADER_PROCESS_SATURATED
        or (tick.host("host.cpu.utilization") or 0.0) >= CPU_SATURATED
    )


def _worst(tick: Tick, *stems: str) -> float:
    return max((v for s in stems for v in tick.played(latency_role(s, "p99"))), default=0.0)


def watch_transfer_bound(tick: Tick) -> bool:
    """Waiting devices and slow transfers (whether they dominate is the SQL's to judge)."""
    duty, _ = _job_duty_and_queue(tick)
    waiting = duty is not None and 1 - duty >= INPUT_WAIT_HIGH
    return waiting and _worst(tick, "h2d", "d2h") >= TRANSFER_P99_HIGH_S


def watch_collective_bound(tick: Tick) -> bool:
    duty, _ = _job_duty_and_queue(tick)
    return (
        duty is not None
        and duty < BUSY
        and (
            _worst(tick, "dcn") >= DCN_P99_HIGH_S
            or _worst(tick, "collective") >= COLLECTIVE_P99_HIGH_S
        )
    )


RULES = [
    Rule(
        INPUT_BOUND,
        "Input bound (device queue empty)",
        detect_input_bound,
        supersedes=("gpu-starvation", "dataloader-bound"),
        min_duration_s=MIN_DURATION_S[INPUT_BOUND],
        watch=watch_input_bound,
    ),
    Rule(
        TRANSFER_BOUND,
        "Host-device transfer latency bound",
        detect_transfer_bound,
        supersedes=("gpu-starvation",),
        min_duration_s=MIN_DURATION_S[TRANSFER_BOUND],
        watch=watch_transfer_bound,
    ),
    Rule(
        COLLECTIVE_BOUND,
        "Collective / cross-slice latency bound",
        detect_collective_bound,
        supersedes=("gpu-starvation",),
        min_duration_s=MIN_DURATION_S[COLLECTIVE_BOUND],
        watch=watch_collective_bound,
    ),
]
