"""Host-side causes: rule 2 (data loader / CPU bound), rule 3 (input I/O bound) and rule 6
(kernel-launch / Python-overhead bound)."""

from __future__ import annotations

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.rules.common import (
    JOB_FILTER,
    by_entity,
    duration,
    entities_text,
    job_params,
    pct,
)
from agent.analysis.rules.common import rate as rate_text
from agent.analysis.thresholds import (
    BUSY,
    CPU_SATURATED,
    DISK_BUSY_HIGH,
    INPUT_WAIT_HIGH,
    IOWAIT_HIGH,
    LOADER_PROCESS_SATURATED,
    LOW_BUSY,
    MAIN_PROCESS_PINNED,
    SM_ACTIVITY_LOW,
)
from agent.analysis.watch import Tick, mean

DATALOADER = "dataloader-bound"
IO_BOUND = "io-bound"
LAUNCH_BOUND = "launch-bound"

#: Per bucket: the job accelerators' mean utilization next to host and process signals.
_JOB_BUCKETS = f"""
    WITH g AS (SELECT t, avg(busy) AS util, avg(sm) AS sm FROM aw_accel
               WHERE {JOB_FILTER} AND busy IS NOT NULL GROUP BY t)
    SELECT 'host' AS entity, g.t, 1 - g.util AS idle, g.util, g.sm, h.cpu, h.iowait,
           h.core_max, h.disk_read, h.disk_busy, p.main_cpu, p.worker_cpu, p.worker_cpu_max,
           p.workers, p.job_read
    FROM g LEFT JOIN aw_host h USING (t) LEFT JOIN aw_proc p USING (t)"""


#: No loader workers and a pinned main process: the job loads data on its training thread.
_LOADING_IN_MAIN = (
    f"coalesce(workers, -1) = 0 AND coalesce(main_cpu, 0) >= {LOADER_PROCESS_SATURATED}"
)


def _devices(ctx: Context) -> str:
    return ctx.info.noun(ctx.info.job_accelerators, plural=True)


def detect_dataloader(ctx: Context) -> list[Finding]:
    """GPUs wait (> 20% idle, XProf's "highly input bound") while loader workers or the host
    CPU are saturated (SageMaker CPUBottleneck: CPU > 90%), or while a job without loader
    workers (num_workers=0) keeps its main process on one full core."""
    if not ctx.info.job_accelerators:
        return []
    eps = ctx.episodes(
        f"""SELECT *, idle >= {INPUT_WAIT_HIGH} AND (coalesce(worker_cpu_max, 0) >=
                {LOADER_PROCESS_SATURATED} OR coalesce(cpu, 0) >= {CPU_SATURATED}
                OR ({_LOADING_IN_MAIN})) AS flag
            FROM ({_JOB_BUCKETS})""",
        ["idle", "cpu", "worker_cpu", "worker_cpu_max", "workers", "main_cpu"],
        params=job_params(ctx),
    )
    if not eps:
        return []
    idle, cpu, wmax, workers, main = (
        weighted(eps, c) for c in ("idle", "cpu", "worker_cpu_max", "workers", "main_cpu")
    )
    if idle is None:
        return []  # the flag needs the idle share, so a flagged window has it
    total = sum(e.duration_s for e in eps)
    if wmax is not None and wmax >= LOADER_PROCESS_SATURATED:
        cause = f"{workers:.0f} loader workers each near a full core ({wmax:.2f} cores at most)"
    elif workers == 0 and (main or 0) >= LOADER_PROCESS_SATURATED:
        cause = (
            f"the main process loaded every batch itself (no loader workers) on one full "
            f"core ({main:.2f} cores)"
        )
    else:
        cause = f"the host CPU at {pct(cpu)}"
    return [
        ctx.finding(
            DATALOADER,
            "critical" if idle >= 0.5 else "warning",
            "host",
            eps,
            f"Data loading is the bottleneck: the {_devices(ctx)} "
            f"({entities_text(ctx.info.job_accelerators)}) sat idle {pct(idle)} of the time for {duration(total)} while {cause}.",
            ctx.info.advice("input")
            or "Give the input pipeline more CPU: more loader workers (if cores are free), "
            "prefetching, decoding on the device, or cache preprocessed data.",
            {
                "metrics": [
                    *ctx.info.metrics("busy"),
                    "host.cpu.utilization",
                    "process.cpu.utilization",
                ],
                "gpu_idle_share": idle,
                "host_cpu": cpu,
                "loader_cpu_max_cores": wmax,
                "loader_workers": workers,
                "main_process_cores": main,
                "threshold": {
                    "gpu_idle_at_least": INPUT_WAIT_HIGH,
                    "host_cpu_at_least": CPU_SATURATED,
                    "loader_cores_at_least": LOADER_PROCESS_SATURATED,
                    "source": "XProf input-pipeline bands; SageMaker CPUBottleneck",
                },
            },
            lost_fraction=idle,
        )
    ]


def detect_io_bound(ctx: Context) -> list[Finding]:
    """GPUs wait while the CPUs sit in iowait or a disk is saturated; without GPUs, a job that
    spends its CPU time waiting on storage (info)."""
    io = f"(coalesce(iowait, 0) >= {IOWAIT_HIGH} OR coalesce(disk_busy, 0) >= {DISK_BUSY_HIGH})"
    if ctx.info.job_accelerators:
        sql = f"SELECT *, idle >= {INPUT_WAIT_HIGH} AND {io} AS flag FROM ({_JOB_BUCKETS})"
        params = job_params(ctx)
    elif not ctx.info.accelerators:
        sql = (
            f"SELECT 'host' AS entity, t, NULL::DOUBLE AS idle, iowait, disk_busy, disk_read, "
            f"NULL::DOUBLE AS job_read, {io} AS flag FROM aw_host"
        )
        params = {}
    else:
        return []
    eps = ctx.episodes(sql, ["idle", "iowait", "disk_busy", "disk_read", "job_read"], params=params)
    if not eps:
        return []
    idle, iowait, busy, read = (
        weighted(eps, c) for c in ("idle", "iowait", "disk_busy", "disk_read")
    )
    total = sum(e.duration_s for e in eps)
    evidence = {
        "metrics": [
            *ctx.info.metrics("busy"),
            "host.cpu.iowait",
            "host.disk.busy_time",
            "host.disk.read_bytes",
        ],
        "gpu_idle_share": idle,
        "iowait": iowait,
        "disk_busy": busy,
        "disk_read_bytes_per_s": read,
        "threshold": {
            "gpu_idle_at_least": INPUT_WAIT_HIGH,
            "iowait_at_least": IOWAIT_HIGH,
            "disk_busy_at_least": DISK_BUSY_HIGH,
            "source": "XProf input-pipeline bands; SageMaker IOBottleneck",
        },
    }
    step = (
        "Read input faster: stage the dataset on local NVMe or in RAM, use larger sequential "
        "shards (WebDataset, TFRecord), raise prefetching, and check the storage's limits."
    )
    if idle is None:
        return [
            ctx.finding(
                IO_BOUND,
                "info",
                "host",
                eps,
                f"The job waited on storage: iowait {pct(iowait)}, disk busy {pct(busy)}, reading "
                f"{rate_text(read)} for {duration(total)}.",
                step,
                evidence,
                lost_fraction=0.0,
            )
        ]
    return [
        ctx.finding(
            IO_BOUND,
            "critical" if idle >= 0.5 else "warning",
            "host",
            eps,
            f"Input I/O is the bottleneck: the {_devices(ctx)} sat idle {pct(idle)} of the time for "
            f"{duration(total)} while the CPUs were {pct(iowait)} in iowait and the busiest disk "
            f"{pct(busy)} busy ({rate_text(read)} read).",
            step,
            evidence,
            lost_fraction=idle,
        )
    ]


def detect_launch_bound(ctx: Context) -> list[Finding]:
    """The GPU looks busy but its SMs are mostly empty (DCGM: SM activity < 0.5) while the main
    process pins one core: many tiny kernels launched from Python. Without GPM, a half-busy GPU
    next to a pinned main process and idle loaders (reported as info)."""
    if not ctx.info.job_accelerators:
        return []
    has_sm = ctx.info.has_column("sm")
    if has_sm:
        cond = f"util >= {LOW_BUSY} AND sm < {SM_ACTIVITY_LOW}"
    else:
        cond = (
            f"util >= 0.2 AND util < {BUSY} AND coalesce(worker_cpu_max, 0) < "
            f"{LOADER_PROCESS_SATURATED} AND coalesce(cpu, 0) < {CPU_SATURATED} "
            f"AND NOT ({_LOADING_IN_MAIN})"
        )
    traffic = "coalesce(peer_tx, 0) + coalesce(peer_rx, 0) < 1e9"
    sql = f"""
        SELECT g.entity, g.t, g.util, g.sm, p.main_cpu, h.core_max,
               {cond} AND {traffic} AND coalesce(p.main_cpu, 0) >= {MAIN_PROCESS_PINNED} AS flag
        FROM (SELECT *, busy AS util FROM aw_accel WHERE {JOB_FILTER}) g
        LEFT JOIN aw_proc p USING (t) LEFT JOIN aw_host h USING (t)"""
    eps = ctx.episodes(sql, ["util", "sm", "main_cpu", "core_max"], params=job_params(ctx))
    findings = []
    by_gpu = by_entity(eps)
    for gpu, g_eps in by_gpu.items():
        util, sm, main = (weighted(g_eps, c) for c in ("util", "sm", "main_cpu"))
        total = sum(e.duration_s for e in g_eps)
        seen = (
            f"busy {pct(util)} of the time but its SMs only {pct(sm)} active"
            if has_sm
            else f"only {pct(util)} busy"
        )
        findings.append(
            ctx.finding(
                LAUNCH_BOUND,
                "warning" if has_sm else "info",
                gpu,
                g_eps,
                f"{gpu} is launch-bound: {seen} for {duration(total)} while the main process kept "
                f"one core pinned ({main:.2f} cores): kernels are too small for Python to keep up.",
                "Cut per-kernel overhead: CUDA graphs / torch.compile(mode='reduce-overhead'), "
                "larger batches, fused optimizers; remove per-step .item()/print syncs.",
                {
                    "metrics": [
                        *ctx.info.metrics("busy", "sm", entity=gpu),
                        "process.cpu.utilization",
                    ],
                    "util": util,
                    "sm_activity": sm,
                    "main_process_cores": main,
                    "signal": ctx.info.column_metric(gpu, "sm" if has_sm else "busy"),
                    "threshold": {
                        "sm_activity_below": SM_ACTIVITY_LOW,
                        "main_process_cores_at_least": MAIN_PROCESS_PINNED,
                        "source": "DCGM profiling guidance (SM activity < 0.5)",
                    },
                },
                lost_fraction=1 - (sm if sm is not None else util or 0.0),
            )
        )
    return findings


def _job_idle(tick: Tick) -> float | None:
    util = mean(tick.accel("busy").values())
    return None if util is None else 1 - util


def watch_dataloader(tick: Tick) -> bool:
    idle = _job_idle(tick)
    if idle is None or idle < INPUT_WAIT_HIGH:
        return False
    workers = tick.process_cpu("worker")
    main = sum(tick.process_cpu("main"))
    return (
        max(workers, default=0.0) >= LOADER_PROCESS_SATURATED
        or (tick.host("host.cpu.utilization") or 0.0) >= CPU_SATURATED
        or (bool(tick.processes) and not workers and main >= LOADER_PROCESS_SATURATED)
    )


def _waiting_on_storage(tick: Tick) -> bool:
    busy = tick.host_spread("disk:", "host.disk.busy_time")
    return (tick.host("host.cpu.iowait") or 0.0) >= IOWAIT_HIGH or max(
        busy, default=0.0
    ) >= DISK_BUSY_HIGH


def watch_io_bound(tick: Tick) -> bool:
    if tick.job:
        idle = _job_idle(tick)
        return idle is not None and idle >= INPUT_WAIT_HIGH and _waiting_on_storage(tick)
    return not tick.devices and _waiting_on_storage(tick)


def watch_launch_bound(tick: Tick) -> bool:
    """The main process pinned while a job accelerator is at least partly busy."""
    if sum(tick.process_cpu("main")) < MAIN_PROCESS_PINNED:
        return False
    return any(v >= 0.2 for v in tick.accel("busy").values())


RULES = [
    Rule(DATALOADER, "Data-loader (CPU) bound", detect_dataloader, watch=watch_dataloader),
    Rule(IO_BOUND, "Input I/O bound", detect_io_bound, watch=watch_io_bound),
    Rule(
        LAUNCH_BOUND,
        "Kernel-launch / Python-overhead bound",
        detect_launch_bound,
        watch=watch_launch_bound,
    ),
]
