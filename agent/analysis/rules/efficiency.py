"""Rule 7 (low tensor-core use) and rule 8 (memory-bandwidth bound): how well busy accelerators
compute. Both need profiling metrics (NVIDIA GPM); rule 8 falls back to the device's memory
busy share (NVML's memory utilization)."""

from __future__ import annotations

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.rules.common import JOB_FILTER, by_entity, duration, job_params, pct
from agent.analysis.thresholds import DRAM_HIGH, LOW_BUSY, SM_ACTIVITY_LOW, TENSOR_LOW
from agent.analysis.watch import Tick

TENSOR = "low-tensor-core-use"
MEMBW = "memory-bandwidth-bound"


def detect_low_tensor(ctx: Context) -> list[Finding]:
    """SMs are active (>= 0.5) but the tensor pipes are nearly idle (< 5%)."""
    if not ctx.info.job_accelerators or not ctx.info.has_column("tensor"):
        return []
    eps = ctx.episodes(
        f"""SELECT entity, t, busy AS util, sm, tensor, fp32, fp16,
                   busy >= {LOW_BUSY} AND sm >= {SM_ACTIVITY_LOW} AND tensor < {TENSOR_LOW} AS flag
            FROM aw_accel WHERE {JOB_FILTER}""",
        ["util", "sm", "tensor", "fp32", "fp16"],
        params=job_params(ctx),
    )
    findings = []
    for gpu, g_eps in by_entity(eps).items():
        sm, tensor, fp32, fp16 = (weighted(g_eps, c) for c in ("sm", "tensor", "fp32", "fp16"))
        total = sum(e.duration_s for e in g_eps)
        findings.append(
            ctx.finding(
                TENSOR,
                "warning",
                gpu,
                g_eps,
                f"{gpu} barely used its tensor cores: {pct(tensor)} tensor activity with SMs "
                f"{pct(sm)} active (FP32 pipe {pct(fp32)}) for {duration(total)}; mixed precision "
                "is likely off.",
                "Enable mixed precision (torch.autocast with bf16/fp16, or "
                "torch.backends.cuda.matmul.allow_tf32 = True) and keep matrix sizes multiples of 8.",
                {
                    "metrics": ctx.info.metrics("tensor", "sm", "fp32", entity=gpu),
                    "tensor_activity": tensor,
                    "sm_activity": sm,
                    "fp32_activity": fp32,
                    "fp16_activity": fp16,
                    "threshold": {"tensor_below": TENSOR_LOW, "sm_at_least": SM_ACTIVITY_LOW},
                },
                lost_fraction=0.0,
            )
        )
    return findings


def detect_membw(ctx: Context) -> list[Finding]:
    """DRAM busy near its practical peak while the GPU computes (NVML memory-controller
    utilization when GPM's DRAM activity is absent)."""
    if not ctx.info.job_accelerators:
        return []
    has_dram = ctx.info.has_column("mem_bw")
    signal = "mem_bw" if has_dram else "mem_util"
    eps = ctx.episodes(
        f"""SELECT entity, t, busy AS util, {signal} AS dram,
                   busy >= {LOW_BUSY} AND {signal} >= {DRAM_HIGH} AS flag
            FROM aw_accel WHERE {JOB_FILTER}""",
        ["util", "dram"],
        params=job_params(ctx),
    )
    findings = []
    for gpu, g_eps in by_entity(eps).items():
        metric_name = ctx.info.column_metric(gpu, signal)
        dram = weighted(g_eps, "dram")
        total = sum(e.duration_s for e in g_eps)
        findings.append(
            ctx.finding(
                MEMBW,
                "info",
                gpu,
                g_eps,
                f"{gpu} is memory-bandwidth bound: device memory was busy {pct(dram)} of the time "
                f"for {duration(total)}, near its practical peak.",
                "Move fewer bytes per FLOP: fuse element-wise ops (torch.compile), use fused or "
                "flash attention, bf16 activations, larger batch or sequence tiles.",
                {
                    "metrics": ctx.info.metrics(signal, "busy", entity=gpu),
                    "dram_activity": dram,
                    "signal": metric_name,
                    "threshold": {"dram_at_least": DRAM_HIGH},
                },
                lost_fraction=0.0,
            )
        )
    return findings


def watch_low_tensor(tick: Tick) -> bool:
    busy, sm, tensor = tick.accel("busy"), tick.accel("sm"), tick.accel("tensor")
    return any(
        v >= LOW_BUSY and sm.get(e, 0.0) >= SM_ACTIVITY_LOW and e in tensor
        and tensor[e] < TENSOR_LOW
        for e, v in busy.items()
    )  # fmt: skip


def watch_membw(tick: Tick) -> bool:
    busy = tick.accel("busy")
    dram = tick.accel("mem_bw" if tick.has_column("mem_bw") else "mem_util")
    return any(v >= LOW_BUSY and dram.get(e, 0.0) >= DRAM_HIGH for e, v in busy.items())


RULES = [
    Rule(TENSOR, "Low tensor-core use", detect_low_tensor, watch=watch_low_tensor),
    Rule(MEMBW, "Memory-bandwidth bound", detect_membw, watch=watch_membw),
]
