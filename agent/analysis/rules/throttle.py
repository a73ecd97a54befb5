"""Rule 9: thermal or power throttling while the accelerator is busy, or clocks below its peers."""

from __future__ import annotations

import statistics

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.rules.common import JOB_FILTER, by_entity, duration, job_params, pct
from agent.analysis.thresholds import CLOCK_BELOW_PEERS, LOW_BUSY, THROTTLE_ACTIVE
from agent.analysis.watch import Tick

THROTTLE = "throttling"


def detect_throttle(ctx: Context) -> list[Finding]:
    if not ctx.info.job_accelerators:
        return []
    sql = f"""
        WITH g AS (
            SELECT entity, t, busy AS util, thr_idle, temp, power, power_limit,
                   clock AS clock_sm, clock_max AS clock_sm_max,
                   greatest(coalesce(thr_thermal_hw, 0), coalesce(thr_thermal, 0)) AS thermal,
                   greatest(coalesce(thr_power, 0), coalesce(thr_power_brake, 0)) AS power_cap,
                   coalesce(thr_slowdown, 0) AS slowdown,
                   greatest(coalesce(thr_thermal_hw, 0), coalesce(thr_slowdown, 0),
                            coalesce(thr_power_brake, 0)) AS hardware,
                   clock / nullif(median(clock) OVER (PARTITION BY t), 0) AS clock_vs_peers,
                   count(*) OVER (PARTITION BY t) AS peers
            FROM aw_accel WHERE {JOB_FILTER})
        SELECT *, clock_sm / nullif(clock_sm_max, 0) AS clock_share,
               util >= {LOW_BUSY} AND (
                   thermal >= {THROTTLE_ACTIVE} OR slowdown >= {THROTTLE_ACTIVE}
                   OR (power_cap >= {THROTTLE_ACTIVE}
                       AND clock_sm < {CLOCK_BELOW_PEERS} * clock_sm_max)
                   OR (peers >= 2 AND clock_vs_peers < {CLOCK_BELOW_PEERS}
                       AND coalesce(thr_idle, 0) < {THROTTLE_ACTIVE})) AS flag
        FROM g"""
    cols = [
        "util",
        "temp",
        "power",
        "power_limit",
        "thermal",
        "power_cap",
        "slowdown",
        "hardware",
        "clock_sm",
        "clock_sm_max",
        "clock_vs_peers",
        "clock_share",
    ]
    findings = []
    for gpu, eps in by_entity(ctx.episodes(sql, cols, params=job_params(ctx))).items():
        v = {c: weighted(eps, c) for c in cols}
        total = sum(e.duration_s for e in eps)
        if (v["thermal"] or 0) >= max(v["power_cap"] or 0, v["slowdown"] or 0) and v["thermal"]:
            cause = f"thermal throttling at {v['temp']:.0f} °C"
            step = (
                "Check cooling: airflow, fan speeds, inlet temperature, blocked heatsinks; "
                "compare with `nvidia-smi -q -d TEMPERATURE,PERFORMANCE`."
            )
        elif (v["power_cap"] or 0) >= THROTTLE_ACTIVE:
            cause = f"power capping at {v['power']:.0f} W of a {v['power_limit']:.0f} W limit"
            step = (
                "Check the power limit (`nvidia-smi -q -d POWER`): restore the default "
                "limit or accept the lower clocks; check PSU and rack power budgets."
            )
        elif (v["slowdown"] or 0) >= THROTTLE_ACTIVE:
            cause = "a hardware slowdown"
            step = "Check the PSU, power cabling and temperature; HW slowdown is a hardware alarm."
        else:
            cause = f"clocks at {pct(v['clock_vs_peers'])} of its peers'"
            step = f"Compare clocks and application-clock settings with the other {ctx.info.noun(plural=True)}."
        share = v["clock_share"]
        findings.append(
            ctx.finding(
                THROTTLE,
                "critical" if (v["hardware"] or 0) >= THROTTLE_ACTIVE else "warning",
                gpu,
                eps,
                f"{gpu} was throttled by {cause} for {duration(total)}: SM clock "
                f"{v['clock_sm']:.0f} MHz ({pct(share)} of max) while busy {pct(v['util'])}.",
                step,
                {
                    "metrics": ctx.info.metrics(
                        "thr_thermal_hw", "thr_power", "clock", "temp", "power", entity=gpu
                    ),
                    **{k: val for k, val in v.items()},
                    "threshold": {
                        "reason_active_share_at_least": THROTTLE_ACTIVE,
                        "clock_below_share": CLOCK_BELOW_PEERS,
                        "util_at_least": LOW_BUSY,
                    },
                },
                lost_fraction=1 - (share if share is not None else 1.0),
            )
        )
    return findings


def watch_throttle(tick: Tick) -> bool:
    """A busy accelerator with a throttle reason active, or clocked below its peers."""
    busy = tick.accel("busy")
    reasons = [
        tick.accel(c)
        for c in ("thr_thermal_hw", "thr_thermal", "thr_slowdown", "thr_power", "thr_power_brake")
    ]
    clock, idle = tick.accel("clock"), tick.accel("thr_idle")
    peers = sorted(clock.values())
    median = statistics.median(peers) if peers else 0.0
    for e, v in busy.items():
        if v < LOW_BUSY:
            continue
        if any(r.get(e, 0.0) >= THROTTLE_ACTIVE for r in reasons):
            return True
        below = len(peers) >= 2 and clock.get(e, median) < CLOCK_BELOW_PEERS * median
        if below and idle.get(e, 0.0) < THROTTLE_ACTIVE:
            return True
    return False


RULES = [
    Rule(
        THROTTLE,
        "Thermal or power throttling",
        detect_throttle,
        supersedes=("straggler",),
        watch=watch_throttle,
    )
]
