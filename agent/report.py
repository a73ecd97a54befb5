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
import re
import sys
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent.analysis.causes import group_findings
from agent.analysis.engine import analyze_run, finding_windows, post_run_resources
from agent.analysis.finding import Finding
from agent.analysis.frame_accel import AcceleratorPlan, accelerator_plan
from agent.analysis.frame_sql import in_list
from agent.analysis.frame_sql import q as sql_text
from agent.analysis.rules import RULES_BY_ID
from agent.analysis.rules.common import duration, pct
from agent.analysis.rules.utilization import IDLE_RESERVED, STARVATION
from agent.analysis.time_axis import TimeAxis, axis_of_run
from agent.errors import StoreError, UsageError
from agent.model import RunInfo
from agent.report_fabric_storage import render_fabric_storage, summarize_fabric_storage
from agent.runs import (
    LocalReadConnection,
    ReadConnection,
    db_label,
    find_run,
    json_object,
    open_read,
    stored_findings,
)
from agent.series import has_series
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
    #: Holes in the recording (``gap`` events): start (ISO, UTC), seconds, missed ticks.
    gaps: list[dict[str, Any]] = field(default_factory=list)
    #: What the devices are called ("GPU", "TPU"; "accelerator" when mixed or unknown).
    device_noun: str = "accelerator"
    #: Fabric ports and the job's mounts (agent/report_fabric_storage.py).
    fabric_storage: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def summarize(
    con: ReadConnection,
    run: RunInfo,
    findings: list[Finding],
    duration_s: float,
    device_rows: DeviceRows | None = None,
) -> RunSummary:
    """The run's headline numbers, from plain queries (so they also work over the socket).

    ``device_rows``: what :func:`busy_and_energy` already read (possibly on another thread,
    while the analysis ran); read now when not given."""
    plan = accelerator_plan()  # accelerators by entity kind, their utilization by role
    busy, energy_rows = device_rows or busy_and_energy(con, run.run_id, plan)
    names = {
        entity: name
        for entity, name in con.execute(
            "SELECT entity, json_extract_string(attrs, '$.name') FROM entities "
            f"WHERE run_id = ? AND ({plan.predicate})",
            [run.run_id],
        ).fetchall()
    }
    overall_row = next((r for r in busy if r[0] is None), None)
    rows = sorted(
        ((e, names.get(e), mean, q) for e, mean, q in busy if e is not None),
        key=lambda r: (len(r[0]), r[0]),
    )
    energy = {entity: float(joules or 0.0) for entity, joules in energy_rows}
    devices = []
    for entity, name, mean, q in rows:
        # quantile_cont over a list gives one value per fraction; NULL when no sample has one.
        p50, p90, p99 = q or (None, None, None)
        devices.append(
            DeviceSummary(
                entity=entity,
                name=name or entity,
                util_mean=mean,
                util_p50=p50,
                util_p90=p90,
                util_p99=p99,
                energy_kwh=energy.get(entity, 0.0) / JOULES_PER_KWH if energy else None,
            )
        )
    overall = (overall_row[2] if overall_row else None) or [None, None, None]
    lost = lost_by_cause(findings)
    gaps = [
        {
            "start": _iso(float(d.get("start", 0.0))),
            "seconds": float(d.get("seconds", 0.0)),
            "missed_ticks": int(d.get("missed_ticks", 0)),
        }
        for (raw,) in con.execute(
            "SELECT detail FROM events WHERE run_id = ? AND kind = 'gap' ORDER BY ts",
            [run.run_id],
        ).fetchall()
        for d in [json_object(raw)]
    ]
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
        gaps,
        device_noun(plan, [d.entity for d in devices]),
        fabric_storage=summarize_fabric_storage(con, run.run_id),
    )


#: Per accelerator (entity None: all of them) ``(entity, mean, [p50, p90, p99])`` of its
#: utilization, and per accelerator ``(entity, joules)``: what :func:`busy_and_energy` reads.
DeviceRows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


def busy_and_energy(con: ReadConnection, run_id: str, plan: AcceleratorPlan) -> DeviceRows:
    """In one scan of the run's samples: per accelerator (and over all of them, entity None)
    the mean and p50/p90/p99 of its utilization (by role), and per accelerator the reset-safe
    increase of its energy counter (by role) over the run.

    Percentiles of raw samples cannot come from the analysis' buckets, so this reads the raw
    values of those few series. In a schema-3 file their ids are picked in the small ``series``
    table first and the scan filters on the integer ids alone (no label is joined to a value
    before the few rows are aggregated); an older file is read through its ``samples`` view."""
    busy = f"metric IN ({in_list(plan.role_metrics('busy'))}) AND ({plan.predicate})"
    energy = f"metric IN ({in_list(plan.role_metrics('energy'))}) AND ({plan.predicate})"
    if has_series(con):
        picked = con.execute(
            f"SELECT series_id, entity, metric, ({busy}) AS is_busy FROM series "
            f"WHERE run_id = ? AND (({busy}) OR ({energy}))",
            [run_id],
        ).fetchall()
        if not picked:
            return [], []
        labels = ", ".join(
            f"({int(i)}, {sql_text(e)}, {sql_text(m)}, {str(bool(b)).lower()})"
            for i, e, m, b in picked
        )
        ids = ", ".join(str(int(r[0])) for r in picked)
        rows = f"""SELECT l.entity, l.metric, v.ts, v.value, l.is_busy
            FROM (SELECT series_id, ts, value FROM sample_values
                  WHERE series_id >= {min(int(r[0]) for r in picked)}
                    AND series_id IN (SELECT unnest([{ids}]))) v
            JOIN (VALUES {labels}) l(series_id, entity, metric, is_busy) USING (series_id)"""
        params: list[Any] = []
    else:
        rows = f"""SELECT entity, metric, ts, value, ({busy}) AS is_busy FROM samples
            WHERE run_id = ? AND (({busy}) OR ({energy}))"""
        params = [run_id]
    # A drop of a counter is a reset, after which it counted up from zero (so the new value is
    # the increase).
    got = con.execute(
        f"""WITH picked AS MATERIALIZED ({rows}),
        util AS (SELECT entity, avg(value) AS mean,
                        quantile_cont(value, [0.5, 0.9, 0.99]) AS q
                 FROM picked WHERE is_busy GROUP BY GROUPING SETS ((entity), ())),
        steps AS (SELECT entity, value,
                         value - lag(value) OVER (PARTITION BY entity, metric ORDER BY ts) AS d
                  FROM picked WHERE NOT is_busy),
        joules AS (SELECT entity, sum(CASE WHEN d >= 0 THEN d ELSE value END) AS joules
                   FROM steps WHERE d IS NOT NULL GROUP BY entity)
        SELECT 'busy' AS part, entity, mean, q FROM util
        UNION ALL SELECT 'energy', entity, joules, NULL FROM joules""",
        params,
    ).fetchall()
    return (
        [(e, mean, quantiles) for part, e, mean, quantiles in got if part == "busy"],
        [(e, joules) for part, e, joules, _ in got if part == "energy"],
    )


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


#: Rules that name a symptom (the GPU is idle) rather than its cause; a second of lost time
#: that a cause also explains is attributed to the cause.
SYMPTOM_RULES = frozenset({STARVATION, IDLE_RESERVED})


def lost_by_cause(findings: list[Finding]) -> dict[str, float]:
    """Seconds lost per rule, each second counted once: causes claim their windows before
    symptoms, and bigger losses before smaller ones. Per rule the worst entity counts
    (synchronous peers wait for it)."""
    worst: dict[str, Finding] = {}
    for f in findings:
        if f.lost_s > 0 and (f.rule not in worst or f.lost_s > worst[f.rule].lost_s):
            worst[f.rule] = f
    claimed: list[tuple[float, float]] = []
    out: dict[str, float] = {}
    for f in sorted(worst.values(), key=lambda f: (f.rule in SYMPTOM_RULES, -f.lost_s, f.rule)):
        spans = [(_epoch(a), _epoch(b)) for a, b in finding_windows(f)]
        total = sum(max(0.0, b - a) for a, b in spans)
        if total <= 0:
            out[f.rule] = f.lost_s
            continue
        free = sum(_uncovered(a, b, claimed) for a, b in spans)
        out[f.rule] = f.lost_s * free / total
        claimed.extend(spans)
    return out


def _epoch(ts: datetime) -> float:
    return ts.replace(tzinfo=timezone.utc).timestamp()


def _uncovered(a: float, b: float, claimed: list[tuple[float, float]]) -> float:
    """Length of ``[a, b)`` outside every claimed interval."""
    cuts = sorted((max(a, x), min(b, y)) for x, y in claimed if y > a and x < b)
    free, at = 0.0, a
    for x, y in cuts:
        if x > at:
            free += x - at
        at = max(at, y)
    return free + max(0.0, b - at)


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


class _Beside:
    """:func:`busy_and_energy` on its own cursor and thread, from :meth:`start` (the analysis'
    scan is done) to :meth:`result` (which runs it inline if it never started, and re-raises)."""

    def __init__(self, con: LocalReadConnection, run_id: str) -> None:
        self._con, self._run_id = con, run_id
        self._thread: threading.Thread | None = None
        self._rows: DeviceRows | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._rows = busy_and_energy(self._con, self._run_id, accelerator_plan())
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="report-summary", daemon=True)
            self._thread.start()

    def abandon(self) -> None:
        """Wait for a started read (a thread cannot be cancelled) and drop what it got."""
        if self._thread is not None:
            self._thread.join()
        self._con.close()

    def result(self) -> DeviceRows:
        try:
            if self._thread is None:
                self._run()
            else:
                self._thread.join()
        finally:
            self._con.close()
        if self._error is not None:
            raise self._error
        assert self._rows is not None
        return self._rows


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


def device_noun(plan: AcceleratorPlan, entities: list[str]) -> str:
    """What the report calls these devices, from their sources' declared kind (``hw.type``)."""
    nouns = set()
    for entity in entities:
        source = next(
            (s for s in plan.sources if any(re.fullmatch(p, entity) for p in s.patterns)), None
        )
        nouns.add(source.noun if source is not None else "accelerator")
    return nouns.pop() if len(nouns) == 1 else "accelerator"


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
        con.close()


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
