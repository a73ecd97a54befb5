"""The report's fabric and storage section: each port's and each mount's figures over the run.

Metrics are chosen by role (``port.*``, ``mount.*``), so any source that declares them appears.
Counters are cumulative and only grow (the collectors unwrap them), so a mean rate is the
rise over the span; latency is summarised by its median and 90th percentile.
"""

from __future__ import annotations

import json
from typing import Any

from agent.analysis.frame_sql import in_list, q
from agent.analysis.rules.common import rate
from agent.catalog import CATALOG


def _names(*roles: str) -> str:
    return in_list(m.name for r in roles for m in CATALOG.by_role(r))


#: Counter roles summarised as a mean rate, gauge roles as extremes and quantiles.
_RISES = ("port.rx_bytes", "port.tx_bytes", "port.errors", "mount.read_bytes", "mount.write_bytes")
_GAUGES = ("port.rate", "port.up", "mount.latency")


def _figures(con: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """Role → entity → its figure, from one grouped scan of the run's samples: for a counter
    role the mean per-second rise (summed over the role's metrics), for a gauge role
    ``(min, max, [p50, p90])``."""
    roles = {m.name: r for r in (*_RISES, *_GAUGES) for m in CATALOG.by_role(r)}
    if not roles:
        return {}
    role_of = " ".join(f"WHEN metric = {q(m)} THEN {q(r)}" for m, r in roles.items())
    rows = con.execute(
        f"""WITH s AS (SELECT entity, metric, ts, value, CASE {role_of} END AS role
                       FROM samples WHERE run_id = ? AND metric IN ({_names(*_RISES, *_GAUGES)})),
            g AS MATERIALIZED (
                SELECT entity, role, metric, max(value) - min(value) AS rise,
                       epoch(max(ts)) - epoch(min(ts)) AS span, min(value) AS lo,
                       max(value) AS hi,
                       quantile_cont(value, [0.5, 0.9]) FILTER (WHERE role IN ({in_list(_GAUGES)}))
                           AS q
                FROM s GROUP BY GROUPING SETS ((entity, role, metric), (entity, role)))
            SELECT entity, role, sum(rise / nullif(span, 0)), NULL, NULL, NULL FROM g
            WHERE metric IS NOT NULL AND role IN ({in_list(_RISES)}) GROUP BY entity, role
            UNION ALL
            SELECT entity, role, NULL, lo, hi, q FROM g
            WHERE metric IS NULL AND role IN ({in_list(_GAUGES)})""",
        [run_id],
    ).fetchall()
    out: dict[str, dict[str, Any]] = {r: {} for r in (*_RISES, *_GAUGES)}
    for entity, role, rise, lo, hi, quantiles in rows:
        if role in _GAUGES:
            out[role][entity] = (lo, hi, quantiles or (None, None))
        elif rise is not None:
            out[role][entity] = rise
    return out


def summarize_fabric_storage(con: Any, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """``{"ports": [...], "mounts": [...]}``; both empty for a run without them."""
    fig = _figures(con, run_id)
    rx, tx = fig.get("port.rx_bytes", {}), fig.get("port.tx_bytes", {})
    errors = fig.get("port.errors", {})
    line = fig.get("port.rate", {})
    up = fig.get("port.up", {})
    ports = [
        {
            "entity": e,
            "rx_bytes_per_s": rx.get(e),
            "tx_bytes_per_s": tx.get(e),
            "rate_min": line.get(e, (None,))[0],
            "rate_max": line.get(e, (None, None))[1],
            "errors_per_s": errors.get(e),
            "was_down": bool(up.get(e) and up[e][0] is not None and up[e][0] < 1),
        }
        for e in sorted(set(rx) | set(tx))
    ]
    read, write = fig.get("mount.read_bytes", {}), fig.get("mount.write_bytes", {})
    latency = fig.get("mount.latency", {})
    attrs = {
        e: json.loads(a) if a else {}
        for e, a in con.execute(
            "SELECT entity, attrs FROM entities WHERE run_id = ? AND entity LIKE 'mount:%'",
            [run_id],
        ).fetchall()
    }
    mounts = [
        {
            "entity": e,
            "mountpoint": attrs.get(e, {}).get("mountpoint", e.removeprefix("mount:")),
            "fstype": attrs.get(e, {}).get("fstype"),
            "read_bytes_per_s": read.get(e),
            "write_bytes_per_s": write.get(e),
            "latency_p50_s": latency.get(e, (None, None, (None, None)))[2][0],
            "latency_p90_s": latency.get(e, (None, None, (None, None)))[2][1],
        }
        for e in sorted(set(read) | set(write))
    ]
    return {"ports": ports, "mounts": mounts}


def _gbps(v: float | None) -> str:
    return "-" if v is None else f"{v * 8 / 1e9:.0f} Gb/s"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"


def render_fabric_storage(section: dict[str, list[dict[str, Any]]], markdown: bool) -> list[str]:
    """The section's lines (none for a run without ports or mounts)."""
    lines: list[str] = []
    ports, mounts = section.get("ports") or [], section.get("mounts") or []
    if ports:
        lines += ["", "## Fabric ports" if markdown else "Fabric ports"]
        if markdown:
            lines += [
                "| port | rx | tx | line rate | errors/s | down |",
                "|---|---|---|---|---|---|",
            ]
        for p in ports:
            rate_text = _gbps(p["rate_max"])
            if p["rate_min"] is not None and p["rate_max"] and p["rate_min"] < p["rate_max"]:
                rate_text = f"{_gbps(p['rate_min'])}..{rate_text}"
            cells = [p["entity"].removeprefix("ib:"), rate(p["rx_bytes_per_s"]),
                     rate(p["tx_bytes_per_s"]), rate_text, f"{p['errors_per_s'] or 0:.1f}",
                     "yes" if p["was_down"] else "no"]  # fmt: skip
            lines.append(
                "| " + " | ".join(cells) + " |"
                if markdown
                else f"  {cells[0]:14} rx {cells[1]:>10} tx {cells[2]:>10} line {cells[3]:>16}"
                f" errors {cells[4]:>6}/s down {cells[5]}"
            )
    if mounts:
        lines += ["", "## Mounts" if markdown else "Mounts"]
        if markdown:
            lines += [
                "| mount | type | read | write | latency p50 | p90 |",
                "|---|---|---|---|---|---|",
            ]
        for m in mounts:
            cells = [m["mountpoint"], m["fstype"] or "?", rate(m["read_bytes_per_s"]),
                     rate(m["write_bytes_per_s"]), _ms(m["latency_p50_s"]),
                     _ms(m["latency_p90_s"])]  # fmt: skip
            lines.append(
                "| " + " | ".join(cells) + " |"
                if markdown
                else f"  {cells[0][:24]:24} {cells[1]:10} read {cells[2]:>10} write {cells[3]:>10}"
                f" latency p50 {cells[4]:>8} p90 {cells[5]:>8}"
            )
    return lines
