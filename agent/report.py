"""``accelwatch report``: a run's summary and its findings, as text, Markdown, HTML or JSON.

Reading a run never writes: the report shows the run's stored post-run findings; a run that
has none (lost, or never analysed) is analysed in memory from the read-only file; a run being
recorded (read through its agent's socket) shows what the live analysis found so far. Only the
recording agent itself, once the run ends, analyses and stores the post-run findings
(:func:`render_run_text`). The summary: duration, devices, their utilization percentiles (named
for the devices' kind: GPU, TPU),
energy from the cumulative ``gpu.energy`` counter (reset-safe), and the time lost by cause,
each second counted once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

from agent.analysis.causes import group_findings
from agent.analysis.engine import analyze_run, post_run_resources
from agent.analysis.finding import Finding
from agent.analysis.rules import RULES_BY_ID
from agent.analysis.rules.common import duration, pct
from agent.analysis.time_axis import TimeAxis, axis_of_run
from agent.errors import StoreError, UsageError
from agent.model import RunInfo
from agent.report_fabric_storage import render_fabric_storage
from agent.report_summary import (
    RunSummary,
    _Beside,
    summarize,
)
from agent.runs import (
    LocalReadConnection,
    ReadConnection,
    db_label,
    find_run,
    open_read,
    stored_findings,
)
from agent.store import close_writable, connect


def run_axis(run: RunInfo) -> TimeAxis:
    """How this run's times are worded: the trace's own seconds for an imported trace."""
    return axis_of_run(run.mode, run.started)


@dataclass
class Report:
    run: RunInfo
    summary: RunSummary
    findings: list[Finding]
    #: Where the findings come from: ``stored`` (the post-run analysis), ``analysed``
    #: (computed now, in memory) or ``live`` (the live analysis of a run being recorded).
    findings_from: str = "stored"

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run.run_id,
            # "trace": times are the imported trace's own (t = seconds from its start).
            "time_axis": "trace" if run_axis(self.run).trace else "clock",
            "summary": asdict(self.summary),
            "findings_from": self.findings_from,
            "findings": [f.to_dict() for f in self.findings],
            # the same findings cause-first: one entry per cause, its symptoms inside
            "groups": [g.to_dict() for g in group_findings(self.findings)],
        }


def build_report(db: ReadConnection, run: str | None, db_path: str) -> Report:
    """Summarise a run and its findings without writing anything.

    A run analysed here reads its devices' raw utilization and energy on a second cursor once
    the analysis has scanned the samples (its pivots and rules work on the small aggregate,
    mostly on one core), so the summary's scan costs little wall time on a spare core."""
    info = find_run(db, run, db_path)
    findings, live = stored_findings(db, info.run_id)
    source = "live" if live or (db.via == "agent" and info.ended is None) else "stored"
    device_rows = None
    if (live or not findings) and db.duckdb is not None and _is_over(info, db):
        beside = _Beside(LocalReadConnection(db.duckdb.cursor()), info.run_id)
        try:
            findings = analyze_run(db.duckdb, info.run_id, store=False, after_scan=beside.start)
        except BaseException:
            beside.abandon()  # the analysis' error is the one to show
            raise
        source, device_rows = "analysed", beside.result()
    ended = info.ended
    if ended is None:
        last = db.execute(
            "SELECT epoch(max(ts)) FROM samples WHERE run_id = ?", [info.run_id]
        ).scalar()
        ended = last or info.started
    summary = summarize(db, info, findings, max(0.0, ended - info.started), device_rows)
    return Report(info, summary, findings, source)


def _is_over(info: RunInfo, db: ReadConnection) -> bool:
    """Whether the run can't change any more: ended, or read from the file (no agent holds it,
    so a run still marked running is lost)."""
    return info.ended is not None or db.via == "file"


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
    axis = run_axis(run)
    h = (lambda t: f"## {t}") if markdown else (lambda t: t)
    b = (lambda t: f"**{t}**") if markdown else (lambda t: t)
    lines = [("# " if markdown else "") + f"accelwatch report: {run.name} ({run.run_id})", ""]
    info = [
        (
            "status",
            s.status + (f", exit code {run.exit_code}" if run.exit_code is not None else ""),
        ),
        ("started", "t = 0 s, the trace's own time axis" if axis.trace else s.started),
        ("duration", duration(s.duration_s)),
        ("host", s.host or "-"),
        ("devices", _devices_text(s)),
        (
            f"{s.device_noun} utilization" if s.devices else "utilization",
            f"p50 {pct(s.util_p50)}, p90 {pct(s.util_p90)}" if s.devices else "no accelerator",
        ),
        ("energy", f"{s.energy_kwh:.3f} kWh" if s.energy_kwh is not None else "not measured"),
    ]
    if s.gaps:
        longest = max(s.gaps, key=lambda g: g["seconds"])
        info.append(
            (
                "gaps",
                f"{len(s.gaps)} in the recording, {sum(g['seconds'] for g in s.gaps):g} s "
                f"unsampled (longest {longest['seconds']:g} s at {longest['start']})",
            )
        )
    if s.scenario:
        info.append(("simulated", s.scenario))
    if report.findings_from == "live":
        info.append(("findings", "live analysis so far (the run is being recorded)"))
    for key, value in info:
        lines.append(f"- {b(key)}: {value}" if markdown else f"  {key:16} {value}")
    if s.devices:
        lines += ["", h("Devices")]
        if markdown:
            lines += [
                f"| {s.device_noun} | name | mean | p50 | p90 | p99 | energy kWh |",
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
    lines += render_fabric_storage(s.fabric_storage, markdown)
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
            f"{g.severity.upper()} {_title(f.rule)} [{f.rule}] on {g.entities_text}: "
            f"{axis.range_text(f.start, f.end)}, {pct(share)} of the run"
            + (f", ~{pct(lost / s.duration_s)} lost" if s.duration_s and lost else "")
        )
        details = [("evidence", _evidence_text(f))]
        details += [(f"explains {x.rule} on {x.entity}", _evidence_text(x)) for x in g.symptoms]
        details.append(("next step", f.next_step))
        if markdown:
            lines += ["", f"### {head}", "", f.summary, ""]
            lines += [f"- {k}: {v}" for k, v in details]
        else:
            lines += ["", f"  {head}", f"    {f.summary}"]
            lines += [f"    {k}: {v}" for k, v in details]
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
    return f"{len(s.devices)} {s.device_noun}(s): {', '.join(names)}"


def render_run_text(db_path: str | os.PathLike[str], run_id: str) -> str:
    """The recording agent's last act: analyse the finished run, store its post-run findings
    (the only write a report makes, by the process that recorded the run) and return the text."""
    if not os.path.exists(db_path):
        raise StoreError(f"no database at {db_path}")
    con = connect(db_path)
    try:
        # The summary reads raw samples too: with the analysis' resources, not the recorder's.
        with post_run_resources(con):
            analyze_run(con, run_id)
            return render_text(build_report(LocalReadConnection(con), run_id, str(db_path)))
    finally:
        close_writable(con, db_path)


def cmd_report(args: argparse.Namespace) -> int:
    """``accelwatch report [RUN] [--db PATH] [--json] [--format text|md|html] [--out FILE]``."""
    db = open_read(args.db)
    try:
        report = build_report(db, args.run, db_label(args.db))
        if args.json:
            text = json.dumps(report.to_json(), indent=2, default=str) + "\n"
        elif args.format == "html":
            from agent.report_html import render_html

            text = render_html(db, report)
        else:
            text = render_text(report, markdown=args.format == "md")
    finally:
        db.close()
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
