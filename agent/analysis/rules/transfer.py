"""Rule 4 (host-to-device transfer bound) and rule 5 (communication bound)."""

from __future__ import annotations

import duckdb

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.frame_sql import in_list
from agent.analysis.rules.common import JOB_FILTER, by_entity, duration, job_params, pct
from agent.analysis.rules.common import rate as rate_text
from agent.analysis.rules.fabric import bucketed, role_metrics
from agent.analysis.thresholds import (
    BUSY,
    IB_HIGH_BYTES,
    NVLINK_HIGH,
    NVLINK_LINK_BYTES,
    PCIE_ACTIVE_BYTES,
    PCIE_LANE_BYTES,
    PCIE_NEAR_PEAK,
    SM_ACTIVITY_LOW,
)
from agent.analysis.watch import Tick
from agent.catalog import CATALOG

H2D = "h2d-transfer"
COMM = "comm-bound"

_LANE_BYTES = (
    "CASE "
    + " ".join(f"WHEN round(host_gen) = {gen} THEN {lane}" for gen, lane in PCIE_LANE_BYTES.items())
    + " END"
)


def detect_h2d(ctx: Context) -> list[Finding]:
    """PCIe traffic near the link's peak while the GPU waits, or a link trained below its
    maximum generation/width while it carries traffic."""
    if not ctx.info.job_accelerators:
        return []
    base = f"""
        SELECT entity, t, busy AS util, host_rx AS pcie_rx, host_tx AS pcie_tx,
               host_gen AS pcie_gen, host_gen_max AS pcie_gen_max, host_width AS pcie_width,
               host_width_max AS pcie_width_max,
               greatest(host_rx, host_tx) / ({_LANE_BYTES} * host_width) AS link_share
        FROM aw_accel WHERE {JOB_FILTER}"""
    evidence_cols = [
        "util",
        "pcie_rx",
        "pcie_tx",
        "link_share",
        "pcie_gen",
        "pcie_gen_max",
        "pcie_width",
        "pcie_width_max",
    ]
    near = ctx.episodes(
        f"SELECT *, link_share >= {PCIE_NEAR_PEAK} AND util < {BUSY} AS flag FROM ({base})",
        evidence_cols,
        params=job_params(ctx),
    )
    down = ctx.episodes(
        f"""SELECT *, (pcie_width < pcie_width_max OR pcie_gen < pcie_gen_max)
                   AND coalesce(pcie_rx, 0) + coalesce(pcie_tx, 0) >= {PCIE_ACTIVE_BYTES} AS flag
            FROM ({base})""",
        evidence_cols,
        params=job_params(ctx),
    )
    findings = []
    for gpu, eps in by_entity(near).items():
        util, share, rx = (weighted(eps, c) for c in ("util", "link_share", "pcie_rx"))
        total = sum(e.duration_s for e in eps)
        findings.append(
            ctx.finding(
                H2D,
                "warning",
                gpu,
                eps,
                f"{gpu} is transfer-bound: PCIe ran at {pct(share)} of the link's peak "
                f"({rate_text(rx)} to the GPU) for {duration(total)} while the GPU was busy only "
                f"{pct(util)}.",
                "Move less over PCIe: keep data on the GPU, use pinned memory with "
                "non_blocking=True copies overlapped with compute, send uint8/bf16 instead of fp32.",
                {
                    "metrics": ctx.info.metrics("host_rx", "host_tx", "busy", entity=gpu),
                    "link_share": share,
                    "pcie_rx_bytes_per_s": rx,
                    "util": util,
                    "kind": "near_peak",
                    "threshold": {"link_share_at_least": PCIE_NEAR_PEAK, "util_below": BUSY},
                },
                lost_fraction=1 - (util or 0.0),
            )
        )
    for gpu, eps in by_entity(down).items():
        gen, gen_max, width, width_max = (
            weighted(eps, c) for c in ("pcie_gen", "pcie_gen_max", "pcie_width", "pcie_width_max")
        )
        total = sum(e.duration_s for e in eps)
        findings.append(
            ctx.finding(
                H2D,
                "warning",
                gpu,
                eps,
                f"{gpu}'s PCIe link runs degraded: Gen{gen:.0f} x{width:.0f} instead of "
                f"Gen{gen_max:.0f} x{width_max:.0f} while carrying traffic for {duration(total)}.",
                "Reseat the GPU or riser, check BIOS PCIe settings and `nvidia-smi -q -d PCIE` "
                "(link replays); the bandwidth to this GPU is reduced until fixed.",
                {
                    "metrics": ctx.info.metrics("host_gen", "host_width", entity=gpu),
                    "gen": gen,
                    "gen_max": gen_max,
                    "width": width,
                    "width_max": width_max,
                    "kind": "downtrained",
                    "threshold": {"traffic_at_least_bytes_per_s": PCIE_ACTIVE_BYTES},
                },
                lost_fraction=0.0,
            )
        )
    return findings


def detect_comm(ctx: Context) -> list[Finding]:
    """High NVLink/InfiniBand traffic while the GPU is "busy" but its SMs (or, without GPM,
    its power draw) say little computing happens: collectives dominate."""
    if not ctx.info.job_accelerators:
        return []
    has_sm = ctx.info.has_column("sm")
    weak = f"g.sm < {SM_ACTIVITY_LOW}" if has_sm else f"g.power < {SM_ACTIVITY_LOW} * g.power_limit"
    nvlink_peak = f"(2 * coalesce(g.peer_links, 0) * {NVLINK_LINK_BYTES})"
    sql = f"""
        SELECT g.entity, g.t, g.busy AS util, g.sm, g.tensor, g.power / g.power_limit AS power_share,
               coalesce(g.peer_tx, 0) + coalesce(g.peer_rx, 0) AS nvlink,
               coalesce(h.ib_rx, 0) + coalesce(h.ib_tx, 0) AS ib, n.nic, n.nic_share,
               g.busy >= {BUSY} AND {weak} AND (
                   (coalesce(g.peer_tx, 0) + coalesce(g.peer_rx, 0))
                       >= {NVLINK_HIGH} * {nvlink_peak} AND {nvlink_peak} > 0
                   OR coalesce(h.ib_rx, 0) + coalesce(h.ib_tx, 0) >= {IB_HIGH_BYTES}
                   OR coalesce(n.nic, 0) >= {IB_HIGH_BYTES}) AS flag
        FROM (SELECT * FROM aw_accel WHERE {JOB_FILTER}) g LEFT JOIN aw_host h USING (t)
             LEFT JOIN ({nic_frame(ctx)}) n USING (t)"""
    eps = ctx.episodes(
        sql,
        ["util", "sm", "tensor", "power_share", "nvlink", "ib", "nic", "nic_share"],
        params=job_params(ctx),
    )
    findings = []
    line_rate = fabric_line_rate(ctx) if eps else None
    busiest = busiest_interface(ctx) if any(e.values.get("nic") for e in eps) else None
    for gpu, g_eps in by_entity(eps).items():
        util, sm, nvlink, ib, power, nic, nic_share = (
            weighted(g_eps, c)
            for c in ("util", "sm", "nvlink", "ib", "power_share", "nic", "nic_share")
        )
        total = sum(e.duration_s for e in g_eps)
        activity = f"SMs only {pct(sm)} active" if has_sm else f"power at {pct(power)} of limit"
        # Against the ports' line rate (both directions), the fabric's share says whether the
        # network is the ceiling (near 100%) or the collectives are latency-bound (far below).
        ib_share = ib / (2 * line_rate) if line_rate and ib is not None else None
        over_ib = f"{rate_text(ib)} over InfiniBand"
        if ib_share is not None:
            over_ib += f" ({pct(ib_share)} of the ports' {rate_text(line_rate)} line rate each way)"
        # Over Ethernet NICs (no IB port carries it) the busiest interface's share of its own
        # line rate says the same; a bond and its members both count, so the busiest, not a sum.
        over_nic = ""
        if nic and nic_share is not None and busiest is not None:
            over_nic = (
                f" and {rate_text(nic)} over the network interfaces ({pct(nic_share)} of "
                f"{busiest[0].removeprefix('net:')}'s {rate_text(busiest[1])} line rate)"
            )
        findings.append(
            ctx.finding(
                COMM,
                "warning",
                gpu,
                g_eps,
                f"{gpu} is communication-bound: busy {pct(util)} but {activity} while moving "
                f"{rate_text(nvlink)} over NVLink and {over_ib}{over_nic} for "
                f"{duration(total)}.",
                "Overlap communication with compute (DDP bucket_cap_mb, FSDP prefetch), use "
                "gradient accumulation to all-reduce less often, compress gradients (bf16), and "
                "check NCCL topology (NCCL_DEBUG=INFO).",
                {
                    "metrics": [
                        *ctx.info.metrics("peer_tx", "peer_rx", entity=gpu),
                        "host.ib.rx_bytes",
                        *(m.name for m in CATALOG.by_role("port.rate")),
                        *(n for r in _NIC_ROLES if nic_share is not None for n in role_metrics(r)),
                        *ctx.info.metrics("sm", "busy", entity=gpu),
                    ],
                    "util": util,
                    "sm_activity": sm,
                    "power_share": power,
                    "nvlink_bytes_per_s": nvlink,
                    "ib_bytes_per_s": ib,
                    "ib_line_rate_bytes_per_s": line_rate,
                    "ib_share_of_line_rate": ib_share,
                    "nic_bytes_per_s": nic,
                    "nic_share_of_line_rate": nic_share,
                    "nic_interface": busiest[0] if busiest and nic_share is not None else None,
                    "nic_line_rate_bytes_per_s": busiest[1]
                    if busiest and nic_share is not None
                    else None,
                    "signal": ctx.info.column_metric(gpu, "sm" if has_sm else "power"),
                    "threshold": {
                        "util_at_least": BUSY,
                        "sm_activity_below": SM_ACTIVITY_LOW,
                        "nvlink_share_at_least": NVLINK_HIGH,
                        "ib_at_least": IB_HIGH_BYTES,
                    },
                },
                lost_fraction=1 - (sm if sm is not None else power or 0.0),
            )
        )
    return findings


_NIC_COUNTERS = ("interface.rx_bytes", "interface.tx_bytes")
_NIC_GAUGES = ("interface.speed", "interface.up")
_NIC_ROLES = (*_NIC_COUNTERS, "interface.speed")


def _ipoib(ctx: Context) -> list[str]:
    """Interfaces the fabric source described as IPoIB: their bytes are their InfiniBand
    port's too, which the rule already weighs against the same line rate."""
    try:
        rows = ctx.rows(
            "SELECT entity FROM entities WHERE run_id = $run AND entity LIKE 'net:%' "
            "AND json_extract_string(attrs, '$.kind') = 'ipoib'",
            {"run": ctx.info.window.run_id},
        )
    except duckdb.Error:  # no entities table (an old or partial file): none excluded
        return []
    return [str(r["entity"]) for r in rows]


def _nic_rows(ctx: Context) -> str:
    """SQL: per interface with a line rate and up, and bucket, its traffic both ways
    (``traffic``) and its busier direction's share of the line rate (``share``); IPoIB
    interfaces are left to their ports."""
    b = ctx.info.bucket_s
    ipoib = _ipoib(ctx)
    not_ipoib = f" AND entity NOT IN ({in_list(ipoib)})" if ipoib else ""
    return f"""
        SELECT entity, t, interface_speed_max AS speed,
               (coalesce(interface_rx_bytes_inc, 0) + coalesce(interface_tx_bytes_inc, 0)) / {b}
                   AS traffic,
               greatest(coalesce(interface_rx_bytes_inc, 0), coalesce(interface_tx_bytes_inc, 0))
                   / {b} / interface_speed_max AS share
        FROM ({bucketed(ctx, _NIC_COUNTERS, _NIC_GAUGES)})
        WHERE interface_speed_max > 0 AND coalesce(interface_up_max, 1) >= 1
          AND (interface_rx_bytes_inc IS NOT NULL OR interface_tx_bytes_inc IS NOT NULL)
          {not_ipoib}"""


def nic_frame(ctx: Context) -> str:
    """SQL: per bucket, the busiest network interface's traffic (``nic``) and share of its line
    rate (``nic_share``); interfaces without a line rate (virtual, loopback) do not count."""
    return (
        f"SELECT t, max(traffic) AS nic, max(share) AS nic_share FROM ({_nic_rows(ctx)}) GROUP BY t"
    )


def busiest_interface(ctx: Context) -> tuple[str, float] | None:
    """The interface the job's traffic mostly went over (highest mean share of its line rate
    in the window) and that line rate; None when no interface reports both."""
    try:
        rows = ctx.rows(
            f"SELECT entity, max(speed) AS speed FROM ({_nic_rows(ctx)}) "
            "GROUP BY entity ORDER BY avg(share) DESC, entity LIMIT 1"
        )
    except duckdb.Error:  # a window without samples: no evidence
        return None
    return (str(rows[0]["entity"]), float(rows[0]["speed"])) if rows else None


def fabric_line_rate(ctx: Context) -> float | None:
    """The job's fabric capacity one way: each port's highest line rate (role ``port.rate``)
    in the window, summed over ports; None when no port reports one.

    Read from the frame's per-bucket aggregate (``aw_agg`` carries the port roles), so the
    finding's evidence costs no scan of the samples."""
    names = role_metrics("port.rate")
    if not names:
        return None
    try:
        rows = ctx.rows(
            "SELECT sum(rate) AS total FROM (SELECT entity, max(max) AS rate FROM aw_agg "
            f"WHERE metric IN ({in_list(names)}) GROUP BY entity)"
        )
    except duckdb.Error:  # a frame without the aggregate: no evidence
        return None
    total = rows[0]["total"] if rows else None
    return float(total) if total else None


def watch_h2d(tick: Tick) -> bool:
    """A host link near its peak while the accelerator waits, or trained below its maximum
    while carrying traffic."""
    util, rx, tx = tick.accel("busy"), tick.accel("host_rx"), tick.accel("host_tx")
    gen, width = tick.accel("host_gen"), tick.accel("host_width")
    gen_max, width_max = tick.accel("host_gen_max"), tick.accel("host_width_max")
    for e in tick.job:
        traffic = max(rx.get(e, 0.0), tx.get(e, 0.0))
        peak = PCIE_LANE_BYTES.get(round(gen.get(e, 0.0)), 0.0) * width.get(e, 0.0)
        if peak > 0 and traffic / peak >= PCIE_NEAR_PEAK and util.get(e, 1.0) < BUSY:
            return True
        slower = width.get(e, 0.0) < width_max.get(e, 0.0) or gen.get(e, 0.0) < gen_max.get(e, 0.0)
        if slower and rx.get(e, 0.0) + tx.get(e, 0.0) >= PCIE_ACTIVE_BYTES:
            return True
    return False


def watch_comm(tick: Tick) -> bool:
    """A busy accelerator that computes little (the traffic test is the SQL's)."""
    busy = tick.accel("busy")
    if tick.has_column("sm"):
        sm = tick.accel("sm")
        return any(v >= BUSY and sm.get(e, 1.0) < SM_ACTIVITY_LOW for e, v in busy.items())
    power, limit = tick.accel("power"), tick.accel("power_limit")
    return any(
        v >= BUSY and power.get(e, 0.0) < SM_ACTIVITY_LOW * limit.get(e, 0.0)
        for e, v in busy.items()
    )


RULES = [
    Rule(H2D, "Host-to-device transfer bound", detect_h2d, watch=watch_h2d),
    Rule(COMM, "Communication bound", detect_comm, watch=watch_comm),
]
