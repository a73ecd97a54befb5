"""``accelwatch report``: a run's summary and its findings, as text, Markdown, HTML or JSON.

The report analyses the run (storing its post-run findings), then summarises it: duration,
devices, GPU utilization percentiles, energy from the cumulative ``gpu.energy`` counter
(reset-safe, via the analysis frames), and the share of the run each finding cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import duckdb

from agent.analysis.engine import analyze_run, find_run
from agent.analysis.finding import Finding
from agent.analysis.frame_accel import AcceleratorPlan, accelerator_plan
from agent.analysis.frame_sql import in_list
from agent.analysis.rules import RULES_BY_ID
from agent.analysis.rules.common import duration, pct
from agent.errors import StoreError, UsageError
from agent.model import RunInfo
from agent.store import connect

JOULES_PER_KWH = 3.6e6


@dataclass
class DeviceSummary:
    entity: str
    name: str
    util_mean: float | None
    util_p50: float | None
    util_p90: float | None
    util_p99: float | None
    energy_kwh: float | None


@dataclass
class RunSummary:
    run_id: str
    name: str
    status: str
    host: str
    started: str
    ended: str | None
    duration_s: float
    scenario: str | None
    devices: list[DeviceSummary] = field(default_factory=list)
    energy_kwh: float | None = None
    util_p50: float | None = None
    util_p90: float | None = None
    lost_share: dict[str, float] = field(default_factory=dict)


def summarize(
    con: duckdb.DuckDBPyConnection, run: RunInfo, findings: list[Finding], duration_s: float
) -> RunSummary:
    """The run's headline numbers; expects the analysis frames (``aw_rated``) on ``con``."""
    plan = accelerator_plan()  # accelerators by entity kind, their utilization by role
    busy = f"metric IN ({in_list(plan.role_metrics('busy'))}) AND ({plan.predicate})"
    rows = con.execute(
        f"""SELECT s.entity, any_value(json_extract_string(e.attrs, '$.name')) AS name,
                  avg(value), quantile_cont(value, [0.5, 0.9, 0.99])
           FROM samples s LEFT JOIN entities e USING (run_id, source, entity)
           WHERE s.run_id = ? AND {busy}
           GROUP BY s.entity ORDER BY length(s.entity), s.entity""",
        [run.run_id],
    ).fetchall()
    energy = _energy_joules(con, plan)
    devices = [
        DeviceSummary(
            entity,
            name or entity,
            mean,
            *(q or [None] * 3),
            energy.get(entity, 0.0) / JOULES_PER_KWH if energy else None,
        )
        for entity, name, mean, q in rows
    ]
    overall = con.execute(
        f"SELECT quantile_cont(value, [0.5, 0.9]) FROM samples WHERE run_id = ? AND {busy}",
        [run.run_id],
    ).fetchone()[0] or [None, None]
    lost: dict[str, float] = {}  # per rule, the worst entity: synchronous peers wait for it
    for f in findings:
        lost[f.rule] = max(lost.get(f.rule, 0.0), f.lost_s)
    return RunSummary(
        run.run_id,
        run.name,
        run.status,
        run.host,
        _iso(run.started),
        _iso(run.ended) if run.ended else None,
        duration_s,
        run.scenario,
        devices,
        sum(energy.values()) / JOULES_PER_KWH if energy else None,
        overall[0],
        overall[1],
        {rule: s / duration_s for rule, s in lost.items() if duration_s > 0},
    )


def _energy_joules(con: duckdb.DuckDBPyConnection, plan: AcceleratorPlan) -> dict[str, float]:
    """Per accelerator, the reset-safe increase of its energy counter (``aw_rated``)."""
    rows = con.execute(
        f"SELECT entity, sum(inc) FROM aw_rated WHERE metric IN "
        f"({in_list(plan.role_metrics('energy'))}) AND ({plan.predicate}) GROUP BY entity"
    ).fetchall()
    return {entity: float(joules or 0.0) for entity, joules in rows}


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class Report:
    run: RunInfo
    summary: RunSummary
    findings: list[Finding]

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run.run_id,
            "summary": asdict(self.summary),
            "findings": [f.to_dict() for f in self.findings],
        }


def build_report(con: duckdb.DuckDBPyConnection, run: str | None, db_path: str) -> Report:
    """Analyse the run (storing its findings) and summarise it."""
    info = find_run(con, run, db_path)
    findings = analyze_run(con, info.run_id)
    ended = info.ended
    if ended is None:
        last = con.execute(
            "SELECT epoch(max(ts)) FROM samples WHERE run_id = ?", [info.run_id]
        ).fetchone()[0]
        ended = last or info.started
    summary = summarize(con, info, findings, max(0.0, ended - info.started))
    return Report(info, summary, findings)


@dataclass
class FindingGroup:
    """Findings of one rule with the same severity and windows on several entities."""

    findings: list[Finding]

    @property
    def first(self) -> Finding:
        return self.findings[0]

    @property
    def entities(self) -> str:
        names = [f.entity for f in self.findings]
        return names[0] if len(names) == 1 else f"{', '.join(names)} ({len(names)})"


def group_findings(findings: list[Finding]) -> list[FindingGroup]:
    """Merge per-GPU copies of the same problem (same rule, severity and windows)."""
    groups: dict[tuple[Any, ...], FindingGroup] = {}
    for f in findings:
        key = (f.rule, f.severity, json.dumps(f.evidence.get("windows")), f.start, f.end)
        if key in groups:
            groups[key].findings.append(f)
        else:
            groups[key] = FindingGroup([f])
    for g in groups.values():
        g.findings.sort(key=lambda f: (len(f.entity), f.entity))
    return list(groups.values())


def _title(rule: str) -> str:
    r = RULES_BY_ID.get(rule)
    return r.title if r else rule


def _evidence_text(f: Finding) -> str:
    skip = {"windows", "metrics", "threshold", "duration_s", "episodes"}
    parts = [f"{k}={_short(v)}" for k, v in f.evidence.items() if k not in skip and v is not None]
    return ", ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render_text(report: Report, *, markdown: bool = False) -> str:
    s, run = report.summary, report.run
    h = (lambda t: f"## {t}") if markdown else (lambda t: t)
    b = (lambda t: f"**{t}**") if markdown else (lambda t: t)
    lines = [("# " if markdown else "") + f"accelwatch report: {run.name} ({run.run_id})", ""]
    info = [
        (
            "status",
            s.status + (f", exit code {run.exit_code}" if run.exit_code is not None else ""),
        ),
        ("started", s.started),
        ("duration", duration(s.duration_s)),
        ("host", s.host or "-"),
        ("devices", _devices_text(s)),
        (
            "GPU utilization",
            f"p50 {pct(s.util_p50)}, p90 {pct(s.util_p90)}" if s.devices else "no GPU",
        ),
        ("energy", f"{s.energy_kwh:.3f} kWh" if s.energy_kwh is not None else "not measured"),
    ]
    if s.scenario:
        info.append(("simulated", s.scenario))
    for key, value in info:
        lines.append(f"- {b(key)}: {value}" if markdown else f"  {key:16} {value}")
    if s.devices:
        lines += ["", h("Devices")]
        if markdown:
            lines += [
                "| GPU | name | mean | p50 | p90 | p99 | energy kWh |",
                "|---|---|---|---|---|---|---|",
            ]
        for d in s.devices:
            cells = [
                d.entity,
                d.name,
                pct(d.util_mean),
                pct(d.util_p50),
                pct(d.util_p90),
                pct(d.util_p99),
                "-" if d.energy_kwh is None else f"{d.energy_kwh:.3f}",
            ]
            lines.append(
                "| " + " | ".join(cells) + " |"
                if markdown
                else f"  {cells[0]:6} {cells[1][:28]:28} mean {cells[2]:>4} p50 {cells[3]:>4}"
                f" p90 {cells[4]:>4} p99 {cells[5]:>4} energy {cells[6]} kWh"
            )
    groups = group_findings(report.findings)
    lines += ["", h(f"Findings ({len(groups)})")]
    if not groups:
        lines.append(
            "  No bottleneck found: nothing to fix in this run."
            if not markdown
            else "No bottleneck found: nothing to fix in this run."
        )
    for g in groups:
        f = g.first
        share = f.duration_s / s.duration_s if s.duration_s else 0.0
        lost = sum(x.lost_s for x in g.findings) / len(g.findings)
        head = (
            f"{f.severity.upper()} {_title(f.rule)} [{f.rule}] on {g.entities}: "
            f"{f.start:%H:%M:%S}-{f.end:%H:%M:%S} UTC, {pct(share)} of the run"
            + (f", ~{pct(lost / s.duration_s)} lost" if s.duration_s and lost else "")
        )
        if markdown:
            lines += [
                "",
                f"### {head}",
                "",
                f.summary,
                "",
                f"- evidence: {_evidence_text(f)}",
                f"- next step: {f.next_step}",
            ]
        else:
            lines += [
                "",
                f"  {head}",
                f"    {f.summary}",
                f"    evidence: {_evidence_text(f)}",
                f"    next step: {f.next_step}",
            ]
    if s.lost_share:
        lines += ["", h("Time lost by cause (estimate, share of the run)")]
        for rule, share in sorted(s.lost_share.items(), key=lambda kv: -kv[1]):
            if share > 0:
                lines.append(f"- {rule}: {pct(share)}" if markdown else f"  {rule:24} {pct(share)}")
    return "\n".join(lines) + "\n"


def _devices_text(s: RunSummary) -> str:
    if not s.devices:
        return "CPU only"
    names = sorted({d.name for d in s.devices})
    return f"{len(s.devices)} GPU(s): {', '.join(names)}"


def open_existing(db_path: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """A read-write connection to an existing database (a report never creates one)."""
    if not os.path.exists(db_path):
        raise StoreError(f"no database at {db_path}")
    return connect(db_path)


def render_run_text(db_path: str | os.PathLike[str], run_id: str) -> str:
    """Analyse a finished run, store its findings and return the text report."""
    con = open_existing(db_path)
    try:
        return render_text(build_report(con, run_id, str(db_path)))
    finally:
        con.close()


def cmd_report(args: argparse.Namespace) -> int:
    """``accelwatch report [RUN] [--db PATH] [--json] [--format text|md|html] [--out FILE]``."""
    con = open_existing(args.db)
    try:
        report = build_report(con, args.run, str(args.db))
        if args.json:
            text = json.dumps(report.to_json(), indent=2, default=str) + "\n"
        elif args.format == "html":
            from agent.report_html import render_html

            text = render_html(con, report)
        else:
            text = render_text(report, markdown=args.format == "md")
    finally:
        con.close()
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"report written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
