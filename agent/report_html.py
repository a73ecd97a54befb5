"""The HTML report: one self-contained file, readable offline, with inline SVG time series of
the key metrics and every finding's windows shaded on them."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import duckdb

from agent.analysis.engine import finding_windows
from agent.analysis.finding import Finding
from agent.analysis.time_axis import TimeAxis
from agent.report import Report, group_findings, render_text, run_axis
from agent.report_fabric_storage_html import render_fabric_storage_html
from agent.runs import ReadConnection

WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 920, 170, 64, 16, 12, 26
MAX_POINTS = 600
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
SEVERITY_COLOR = {"critical": "#d62728", "warning": "#ff9f1c", "info": "#4e79a7"}


@dataclass(frozen=True)
class Chart:
    """One plot: a column of a frame table, one line per entity, scaled for display.

    ``{device}`` in the title is the run's accelerator noun ("GPU", "TPU chip"): the frames are
    by role, so the same chart shows whichever accelerators the run had.
    """

    title: str
    table: str
    column: str
    unit: str
    scale: float = 1.0
    entity: str = "entity"


CHARTS: tuple[Chart, ...] = (
    Chart("{device} utilization", "aw_gpu", "util", "%", 100.0),
    Chart("SM activity", "aw_gpu", "sm", "%", 100.0),
    Chart("Tensor activity", "aw_gpu", "tensor", "%", 100.0),
    Chart("{device} memory used", "aw_gpu", "mem_used", "GiB", 1 / 2**30),
    Chart("{device} power", "aw_gpu", "power", "W"),
    Chart("{device} temperature", "aw_gpu", "temp", "°C"),
    Chart("SM clock", "aw_gpu", "clock_sm", "MHz"),
    Chart("PCIe to {device}", "aw_gpu", "pcie_rx", "GB/s", 1e-9),
    Chart("NVLink sent", "aw_gpu", "nvlink_tx", "GB/s", 1e-9),
    Chart("Host CPU", "aw_host", "cpu", "%", 100.0, entity="'host'"),
    Chart("Host iowait", "aw_host", "iowait", "%", 100.0, entity="'host'"),
    Chart("Disk writes", "aw_host", "disk_write", "MB/s", 1e-6, entity="'host'"),
    Chart("Step time", "aw_steps", "step_time", "s"),
)


def _ensure_frames(con: duckdb.DuckDBPyConnection, report: Report) -> None:
    """Build the run's ``aw_*`` frames (temp tables, in memory) unless the analysis did."""
    from agent.analysis.engine import choose_bucket_s, post_run_resources, run_bounds
    from agent.analysis.frame import Window, build_frames

    if report.findings_from == "analysed":
        return
    duration, interval = run_bounds(con, report.run.run_id)
    with post_run_resources(con):
        build_frames(con, Window(report.run.run_id, choose_bucket_s(duration, interval)))


def _series(
    con: duckdb.DuckDBPyConnection, chart: Chart, width_s: float
) -> dict[str, list[tuple[float, float]]]:
    rows = con.execute(
        f"SELECT {chart.entity} AS e, floor(t / {width_s}) * {width_s} AS x, "
        f"avg({chart.column}) * {chart.scale} AS y FROM {chart.table} "
        f"WHERE {chart.column} IS NOT NULL GROUP BY 1, 2 ORDER BY length(e), e, x"
    ).fetchall()
    out: dict[str, list[tuple[float, float]]] = {}
    for entity, x, y in rows:
        out.setdefault(entity, []).append((float(x), float(y)))
    return out


def _clock(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%H:%M:%S")


def _epoch(ts: datetime) -> float:
    return ts.replace(tzinfo=timezone.utc).timestamp()


def svg_chart(
    chart: Chart,
    series: dict[str, list[tuple[float, float]]],
    t0: float,
    t1: float,
    findings: Sequence[Finding],
    axis: TimeAxis | None = None,
) -> str:
    """An inline SVG line chart with the findings' windows shaded behind the lines."""
    ys = [y for pts in series.values() for _, y in pts]
    y_min, y_max = min(0.0, min(ys)), max(ys)
    if chart.unit == "%":
        y_max = max(y_max, 100.0)
    y_max = y_max if y_max > y_min else y_min + 1.0
    span = max(t1 - t0, 1e-9)
    tick = _clock if axis is None or not axis.trace else (lambda t: axis.at(t).removeprefix("t = "))
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B

    def px(t: float) -> float:
        return PAD_L + (t - t0) / span * plot_w

    def py(y: float) -> float:
        return PAD_T + (1 - (y - y_min) / (y_max - y_min)) * plot_h

    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="{html.escape(chart.title)}">'
    ]
    for f in findings:
        for a, b in finding_windows(f):
            x0, x1 = max(px(_epoch(a)), PAD_L), min(px(_epoch(b)), WIDTH - PAD_R)
            if x1 > x0:
                parts.append(
                    f'<rect x="{x0:.1f}" y="{PAD_T}" width="{max(x1 - x0, 1.5):.1f}" '
                    f'height="{plot_h}" fill="{SEVERITY_COLOR[f.severity]}" opacity="0.16">'
                    f"<title>{html.escape(f.rule)} on {html.escape(f.entity)}</title></rect>"
                )
    parts.append(
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{plot_w}" height="{plot_h}" '
        'fill="none" stroke="#bbb"/>'
    )
    for frac in (0.0, 0.5, 1.0):
        y = y_min + frac * (y_max - y_min)
        parts.append(f'<text x="{PAD_L - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        t = t0 + frac * span
        parts.append(
            f'<text x="{px(t):.1f}" y="{HEIGHT - 8}" text-anchor="middle">{tick(t)}</text>'
        )
    for i, (entity, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.4" points="{path}">'
            f"<title>{html.escape(entity)}</title></polyline>"
        )
    parts.append("</svg>")
    legend = " ".join(
        f'<span style="color:{PALETTE[i % len(PALETTE)]}">&#9632; {html.escape(e)}</span>'
        for i, e in enumerate(series)
    )
    return (
        f"<figure><figcaption><b>{html.escape(chart.title)}</b> ({chart.unit}) {legend}"
        f"</figcaption>{''.join(parts)}</figure>"
    )


def render_html(db: ReadConnection, report: Report) -> str:
    """The report page. Its charts read the analysis frames, built in memory on a local
    read-only connection (never stored); over a recording agent's socket there are none."""
    t0, t1 = report.run.started, report.run.started + report.summary.duration_s
    width_s = max(1.0, (t1 - t0) / MAX_POINTS)
    axis = run_axis(report.run)
    noun = report.summary.device_noun
    charts = []
    con = db.duckdb
    if con is not None:
        _ensure_frames(con, report)
        for chart in CHARTS:
            series = _series(con, chart, width_s)
            if series:
                named = replace(chart, title=chart.title.format(device=noun))
                charts.append(svg_chart(named, series, t0, t1, report.findings, axis))
    else:
        charts.append("<p>Charts appear once the recording ends (it is being recorded).</p>")
    cards = []
    for g in group_findings(report.findings):
        f = g.first
        evidence = html.escape(
            ", ".join(
                f"{k}={v}" for k, v in f.evidence.items() if k not in ("windows", "threshold")
            )
        )
        cards.append(
            f'<div class="finding {f.severity}"><div><b>{f.severity.upper()}</b> '
            f"<code>{html.escape(f.rule)}</code> on {html.escape(g.entities_text)} "
            f"{html.escape(axis.range_text(f.start, f.end))}</div>"
            f"<p>{html.escape(f.summary)}</p><p><i>Next step:</i> {html.escape(f.next_step)}</p>"
            f"<details><summary>evidence</summary><p>{evidence}</p>"
            f"<p>thresholds: {html.escape(str(f.evidence.get('threshold', {})))}</p></details>"
            "</div>"
        )
    summary = html.escape(render_text(report).split("\nFindings")[0])
    title = html.escape(f"accelwatch report: {report.run.name} ({report.run.run_id})")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 980px; color: #222; }}
pre {{ background: #f6f6f6; padding: .8em; overflow-x: auto; }}
svg text {{ font-size: 11px; fill: #555; }}
figure {{ margin: 1em 0; }} figcaption span {{ margin-left: .6em; font-size: 90%; }}
.finding {{ border-left: 5px solid #999; padding: .3em .8em; margin: .8em 0; background: #fafafa; }}
.finding.critical {{ border-color: {SEVERITY_COLOR["critical"]}; }}
.finding.warning {{ border-color: {SEVERITY_COLOR["warning"]}; }}
.finding.info {{ border-color: {SEVERITY_COLOR["info"]}; }}
table {{ border-collapse: collapse; margin: .5em 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .2em .7em; text-align: left; }}
</style></head><body>
<h1>{title}</h1>
<pre>{summary}</pre>
<h2>Findings ({len(cards)})</h2>
{"".join(cards) or "<p>No bottleneck found: nothing to fix in this run.</p>"}
<h2>Time series</h2>
<p>Shaded bands are the findings' windows (red critical, orange warning, blue info).</p>
{"".join(charts)}
{render_fabric_storage_html(con, report, width_s)}
</body></html>
"""
