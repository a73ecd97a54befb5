"""Findings for monitoring backends: a gauge of active findings, and a log record per finding.

Both read the live context's findings (a tuple the live analysis replaces whole), so they cost
nothing while findings do not change, and both see them cause-first (:mod:`agent.analysis.causes`):
a data loader that starves eight GPUs is one ``dataloader-bound`` finding whose record names the
eight GPUs and carries their evidence, not nine.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry._logs import Logger, SeverityNumber
from opentelemetry.metrics import Observation

from agent.analysis.causes import group_mappings
from agent.analysis.finding import Finding as AnalysisFinding
from agent.snapshot import Snapshot
from exporters.naming import InstrumentSpec

FINDINGS_GAUGE = "accelwatch.findings.active"
FINDINGS_SPEC = InstrumentSpec(
    FINDINGS_GAUGE,
    "{finding}",
    "gauge",
    "Findings of the live analysis that are active now, by rule and severity.",
)
RULE = "accelwatch.finding.rule"
SEVERITY = "accelwatch.finding.severity"
EVENT_NAME = "accelwatch.finding"

_SEVERITY_NUMBERS = {
    "debug": SeverityNumber.DEBUG,
    "info": SeverityNumber.INFO,
    "notice": SeverityNumber.INFO2,
    "warning": SeverityNumber.WARN,
    "warn": SeverityNumber.WARN,
    "error": SeverityNumber.ERROR,
    "critical": SeverityNumber.FATAL,
}

Finding = Mapping[str, Any]


class FindingsGauge:
    """Counts causes by (rule, severity) (symptoms count inside their cause); a pair seen once
    reports 0 after it clears, never vanishes."""

    def __init__(self, findings: Callable[[], Iterable[Finding]]) -> None:
        self._findings = findings
        self._known: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def observe(self) -> list[Observation]:
        counts = Counter(
            (g.rule or "unknown", g.severity) for g in group_mappings(self._findings())
        )
        with self._lock:
            self._known.update(counts)
            known = sorted(self._known)
        return [
            Observation(counts.get(pair, 0), {RULE: pair[0], SEVERITY: pair[1]}) for pair in known
        ]


def finding_key(finding: Finding) -> tuple[str, str, str]:
    return (str(finding.get("rule")), str(finding.get("entity")), str(finding.get("start_ts")))


class FindingLogEmitter:
    """Emits a log record when a cause appears, again when its severity changes (a degraded
    port that then goes down: alerting on log severity must see it), and one when it clears
    (a hub subscriber); the record's evidence holds each entity's, its entities attribute
    lists them."""

    def __init__(self, logger: Logger, findings: Callable[[], list[Finding]]) -> None:
        self._logger = logger
        self._findings = findings
        self._last_list: list[Finding] | None = None
        self._active: dict[tuple[str, str, str], Finding] = {}
        self.emitted = 0

    def __call__(self, snapshot: Snapshot) -> None:
        current = self._findings()
        if current is self._last_list:  # unchanged: the analysis replaces the list whole
            return
        self._last_list = current
        now = {finding_key(g): g for g in (x.to_dict() for x in group_mappings(current))}
        for key, finding in now.items():
            before = self._active.get(key)
            if before is None or before.get("severity") != finding.get("severity"):
                self._emit(finding, snapshot.ts, resolved=False)
        for key in self._active.keys() - now.keys():
            self._emit(self._active[key], snapshot.ts, resolved=True)
        self._active = now

    def _emit(self, finding: Finding, ts: float, *, resolved: bool) -> None:
        severity = str(finding.get("severity", "info"))
        attributes: dict[str, Any] = {
            RULE: str(finding.get("rule", "unknown")),
            SEVERITY: severity,
            "accelwatch.finding.entity": str(finding.get("entity", "")),
            "accelwatch.finding.entities": [str(e) for e in finding.get("entities") or ()],
            "accelwatch.finding.state": "resolved" if resolved else "active",
            "accelwatch.finding.evidence": json.dumps(
                finding.get("evidence"), default=str, sort_keys=True
            ),
        }
        if finding.get("next_step"):
            attributes["accelwatch.finding.next_step"] = str(finding["next_step"])
        parsed = AnalysisFinding.from_mapping(finding)  # epoch seconds, whatever the input's
        bounds = {"start_ts": parsed.start_ts, "end_ts": parsed.end_ts}
        for bound, value in bounds.items():
            if finding.get(bound) is not None and value is not None:
                attributes[f"accelwatch.finding.{bound}"] = float(value)
        summary = str(finding.get("summary", ""))
        self._logger.emit(
            timestamp=int(ts * 1e9),
            severity_number=SeverityNumber.INFO
            if resolved
            else _SEVERITY_NUMBERS.get(severity.lower(), SeverityNumber.INFO),
            severity_text="INFO" if resolved else severity.upper(),
            body=f"resolved: {summary}" if resolved else summary,
            attributes=attributes,
            event_name=EVENT_NAME,
        )
        self.emitted += 1
