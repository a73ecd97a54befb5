"""The HTML report's fabric and storage section: the ports' and mounts' tables, and charts of
port throughput, mount throughput and mount latency over the run (findings shaded on them).

The tables are the summary's (:func:`agent.report_fabric_storage.summarize_fabric_storage`,
the same figures as the text, Markdown and JSON reports); the charts read ``samples`` by role,
so any source declaring ``port.*`` / ``mount.*`` metrics appears. Counters become per-second
rates from the rise of each bucket's largest value.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from agent.analysis.rules.common import rate
from agent.report_fabric_storage import _gbps, _ms, _names

if TYPE_CHECKING:
    import duckdb

    from agent.report import Report

#: (title, roles, counter, unit, scale): one chart per line, one line per entity.
CHARTS = (
    ("Fabric port throughput (rx + tx)", ("port.rx_bytes", "port.tx_bytes"), True, "Gb/s", 8e-9),
    ("Mount throughput (read + write)", ("mount.read_bytes", "mount.write_bytes"), True, "MB/s",
     1e-6),
    ("Mount latency per operation", ("mount.latency",), False, "ms", 1e3),
)  # fmt: skip


def _series(
    con: duckdb.DuckDBPyConnection, run_id: str, roles: tuple[str, ...], counter: bool,
    width_s: float, scale: float,
) -> dict[str, list[tuple[float, float]]]:  # fmt: skip
    """Entity → (bucket start, value): per-second rise of counters, mean of gauges."""
    names = _names(*roles)
    if counter:
        sql = f"""
            SELECT entity, x, sum(rise) / {width_s} * {scale} AS y FROM (
                SELECT entity, metric, x,
                       greatest(mx - lag(mx) OVER (PARTITION BY entity, metric ORDER BY x), 0)
                           AS rise
                FROM (SELECT entity, metric, floor(epoch(ts) / {width_s}) * {width_s} AS x,
                             max(value) AS mx
                      FROM samples WHERE run_id = ? AND metric IN ({names})
                      GROUP BY entity, metric, x))
            WHERE rise IS NOT NULL GROUP BY entity, x ORDER BY length(entity), entity, x"""
    else:
        sql = f"""
            SELECT entity, floor(epoch(ts) / {width_s}) * {width_s} AS x,
                   avg(value) * {scale} AS y
            FROM samples WHERE run_id = ? AND metric IN ({names})
            GROUP BY entity, x ORDER BY length(entity), entity, x"""
    out: dict[str, list[tuple[float, float]]] = {}
    for entity, x, y in con.execute(sql, [run_id]).fetchall():
        if y is not None:
            out.setdefault(entity.removeprefix("ib:").removeprefix("mount:"), []).append(
                (float(x), float(y))
            )
    return out


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def render_fabric_storage_html(
    con: duckdb.DuckDBPyConnection | None, report: Report, width_s: float
) -> str:
    """The section (empty for a run without ports or mounts). ``con`` None (a recording
    agent's socket): the tables only."""
    from agent.report_html import Chart, svg_chart

    section: dict[str, list[dict[str, Any]]] = report.summary.fabric_storage or {}
    ports, mounts = section.get("ports") or [], section.get("mounts") or []
    if not ports and not mounts:
        return ""
    parts = ["<h2>Fabric and storage</h2>"]
    if ports:
        rows = []
        for p in ports:
            line = _gbps(p["rate_max"])
            if p["rate_min"] is not None and p["rate_max"] and p["rate_min"] < p["rate_max"]:
                line = f"{_gbps(p['rate_min'])}..{line}"
            rows.append([p["entity"].removeprefix("ib:"), rate(p["rx_bytes_per_s"]),
                         rate(p["tx_bytes_per_s"]), line, f"{p['errors_per_s'] or 0:.1f}",
                         "yes" if p["was_down"] else "no"])  # fmt: skip
        parts.append("<h3>Fabric ports</h3>")
        parts.append(_table(["port", "rx", "tx", "line rate", "errors/s", "down"], rows))
    if mounts:
        rows = [[m["mountpoint"], m["fstype"] or "?", rate(m["read_bytes_per_s"]),
                 rate(m["write_bytes_per_s"]), _ms(m["latency_p50_s"]), _ms(m["latency_p90_s"])]
                for m in mounts]  # fmt: skip
        parts.append("<h3>Mounts</h3>")
        parts.append(_table(["mount", "type", "read", "write", "latency p50", "p90"], rows))
    if con is not None:
        t0 = report.run.started
        t1 = t0 + report.summary.duration_s
        from agent.report import run_axis

        axis = run_axis(report.run)
        for title, roles, counter, unit, scale in CHARTS:
            series = _series(con, report.run.run_id, roles, counter, width_s, scale)
            if series:
                chart = Chart(title, "samples", "value", unit)
                parts.append(svg_chart(chart, series, t0, t1, report.findings, axis))
    return "\n".join(parts)
