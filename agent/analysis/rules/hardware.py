"""Rule 14: hardware faults - XID errors, uncorrectable ECC, row-remap trouble, a GPU that
fell off the bus, PCIe replays (DCGM health watch: more than 8 per minute)."""

from __future__ import annotations

import json
from typing import Any

from agent.analysis.engine import Context, Rule
from agent.analysis.finding import Finding, Severity
from agent.analysis.thresholds import CRITICAL_XIDS, PCIE_REPLAYS_PER_MIN
from agent.analysis.watch import Tick

HARDWARE = "hardware-fault"
_FAULT_EVENTS = ("xid", "gpu_lost")
_NEXT_STEP = (
    "Drain the node: run `nvidia-smi -q` and `dcgmi diag -r 2` on it, look up the XID "
    "in NVIDIA's XID catalog, and reset or replace the GPU before the next run."
)


def detect_hardware(ctx: Context) -> list[Finding]:
    return _events(ctx) + _counters(ctx) + _vanished(ctx)


def _events(ctx: Context) -> list[Finding]:
    w = ctx.info.window
    rows = ctx.rows(
        """SELECT kind, entity, ts, detail FROM events
           WHERE run_id = $run AND kind IN (SELECT unnest($kinds))
             AND ($start IS NULL OR ts >= $start) AND ($end IS NULL OR ts < $end)
           ORDER BY ts""",
        {"run": w.run_id, "kinds": list(_FAULT_EVENTS), "start": w.start, "end": w.end},
    )
    findings = []
    for r in rows:
        detail: dict[str, Any] = json.loads(r["detail"] or "{}")
        span = [ctx.span(r["entity"], r["ts"].timestamp(), r["ts"].timestamp())]
        if r["kind"] == "gpu_lost":
            findings.append(
                ctx.finding(
                    HARDWARE,
                    "critical",
                    r["entity"],
                    span,
                    f"{r['entity']} was lost (fell off the bus or stopped answering the driver).",
                    _NEXT_STEP,
                    {"event": "gpu_lost", **detail},
                    lost_fraction=0.0,
                )
            )
            continue
        code = detail.get("xid", detail.get("code"))
        severity: Severity = "critical" if code in CRITICAL_XIDS else "warning"
        findings.append(
            ctx.finding(
                HARDWARE,
                severity,
                r["entity"],
                span,
                f"{r['entity']} reported XID {code}"
                + (" (a GPU or memory fault)." if severity == "critical" else "."),
                _NEXT_STEP,
                {
                    "event": "xid",
                    "xid": code,
                    **detail,
                    "threshold": {"critical_xids": sorted(CRITICAL_XIDS)},
                },
                lost_fraction=0.0,
            )
        )
    return findings


def _counters(ctx: Context) -> list[Finding]:
    """Counter increases not already reported as events (a collector may only count XIDs)."""
    has_xid_events = bool(
        ctx.rows(
            "SELECT 1 FROM events WHERE run_id = ? AND kind = 'xid' LIMIT 1",
            [ctx.info.window.run_id],
        )
    )
    rows = ctx.rows(f"""
        SELECT entity, min(t) AS t0, max(t) AS t1,
               sum(fault) * {ctx.info.bucket_s} AS xids,
               sum(ecc_uncorrected) * {ctx.info.bucket_s} AS ecc,
               max(remap_uncorrectable) - min(remap_uncorrectable) AS remapped,
               max(remap_pending) AS pending, max(remap_failure) AS failure,
               max(host_replays) * 60 AS replays_per_min,
               min(t) FILTER (WHERE fault > 0 OR ecc_uncorrected > 0 OR remap_failure > 0
                              OR host_replays * 60 > {PCIE_REPLAYS_PER_MIN}) AS first_bad
        FROM aw_accel GROUP BY entity""")
    findings = []
    for r in rows:
        problems: list[tuple[Severity, str]] = []
        if (r["xids"] or 0) > 0 and not has_xid_events:
            problems.append(("critical", f"{r['xids']:.0f} XID error(s)"))
        if (r["ecc"] or 0) > 0:
            problems.append(("critical", f"{r['ecc']:.0f} uncorrectable ECC error(s)"))
        if (r["failure"] or 0) > 0:
            problems.append(("critical", "a failed row remap"))
        if (r["remapped"] or 0) > 0:
            problems.append(("warning", f"{r['remapped']:.0f} new row(s) remapped"))
        if (r["pending"] or 0) > 0:
            problems.append(("warning", "a row remap waiting for a GPU reset"))
        if (r["replays_per_min"] or 0) > PCIE_REPLAYS_PER_MIN:
            problems.append(("warning", f"{r['replays_per_min']:.0f} PCIe replays per minute"))
        if not problems:
            continue
        t0 = r["first_bad"] if r["first_bad"] is not None else r["t0"]
        worst: Severity = "critical" if any(s == "critical" for s, _ in problems) else "warning"
        findings.append(
            ctx.finding(
                HARDWARE,
                worst,
                r["entity"],
                [ctx.span(r["entity"], t0, r["t1"])],
                f"{r['entity']} shows hardware errors: {', '.join(p for _, p in problems)}.",
                _NEXT_STEP,
                {
                    "metrics": ctx.info.metrics(
                        "fault",
                        "ecc_uncorrected",
                        "remap_uncorrectable",
                        "host_replays",
                        entity=r["entity"],
                    ),
                    "xids": r["xids"],
                    "ecc_uncorrected": r["ecc"],
                    "rows_remapped": r["remapped"],
                    "remap_pending": r["pending"],
                    "remap_failure": r["failure"],
                    "pcie_replays_per_min": r["replays_per_min"],
                    "threshold": {
                        "pcie_replays_per_min_above": PCIE_REPLAYS_PER_MIN,
                        "source": "DCGM health watches",
                    },
                },
                lost_fraction=0.0,
            )
        )
    return findings


def _vanished(ctx: Context) -> list[Finding]:
    """An accelerator whose samples stop while its peers go on, without a gpu_lost event."""
    if len(ctx.info.accelerators) < 2:
        return []
    lost_events = {
        r["entity"]
        for r in ctx.rows(
            "SELECT DISTINCT entity FROM events WHERE run_id = ? AND kind = 'gpu_lost'",
            [ctx.info.window.run_id],
        )
    }
    rows = ctx.rows(f"""
        WITH last AS (SELECT entity, max(t) AS t_last FROM aw_accel GROUP BY entity)
        SELECT entity, t_last, (SELECT max(t_last) FROM last) AS t_end FROM last
        WHERE t_last < (SELECT max(t_last) FROM last) - {max(30.0, 5 * ctx.info.bucket_s)}""")
    return [
        ctx.finding(
            HARDWARE,
            "critical",
            r["entity"],
            [ctx.span(r["entity"], r["t_last"], r["t_end"])],
            f"{r['entity']} stopped reporting while the other "
            f"{ctx.info.noun(plural=True)} went on: it was likely lost.",
            _NEXT_STEP,
            {"event": "samples_stopped", "metrics": ctx.info.metrics("busy", entity=r["entity"])},
            lost_fraction=0.0,
        )
        for r in rows
        if r["entity"] not in lost_events
    ]


def watch_hardware(tick: Tick) -> bool:
    """A fault event, a fault counter moving, or an accelerator that stopped reporting."""
    if tick.events & set(_FAULT_EVENTS) or tick.missing:
        return True
    for column in ("fault", "ecc_uncorrected", "remap_failure", "remap_pending"):
        if any(v > 0 for v in tick.accel(column, tick.devices).values()):
            return True
    replays = tick.accel("host_replays", tick.devices).values()
    return any(v * 60 > PCIE_REPLAYS_PER_MIN for v in replays)


RULES = [
    Rule(
        HARDWARE,
        "Hardware fault",
        detect_hardware,
        min_duration_s=0.0,
        kind_min_duration_s=(("samples_stopped", 30.0),),
        watch=watch_hardware,
    )
]
