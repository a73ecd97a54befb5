"""What a rule reports: a :class:`Finding` with its evidence, and how findings are stored.

The one finding type of accelwatch: the rules emit it, the store keeps it, the report, the
exporters and the TUI show it (``agent.reader`` re-exports it for viewers). One severity
order: :data:`SEVERITY_RANK`, higher is worse.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import duckdb

Severity = Literal["info", "warning", "critical"]
#: Higher is worse; unknown severities (from foreign mappings) rank with ``info``.
SEVERITY_RANK: Mapping[str, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}


@dataclass(frozen=True)
class Finding:
    """One diagnosis: which rule, where (entity, window), how bad, why (evidence), what next.

    ``evidence`` holds the metrics used, the observed values and the thresholds they crossed;
    ``lost_s`` estimates the run time this problem cost, so reports can rank findings.
    """

    rule: str
    severity: Severity
    entity: str
    start: datetime
    #: None while a live finding is still open (viewers show "now").
    end: datetime | None
    summary: str
    next_step: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    lost_s: float = 0.0
    live: bool = False

    @property
    def duration_s(self) -> float:
        if self.end is None:
            return 0.0
        return max(0.0, (self.end - self.start).total_seconds())

    @property
    def start_ts(self) -> float:
        """The start as epoch seconds (``start`` is naive UTC)."""
        return self.start.replace(tzinfo=timezone.utc).timestamp()

    @property
    def end_ts(self) -> float | None:
        return None if self.end is None else self.end.replace(tzinfo=timezone.utc).timestamp()

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Finding:
        """A finding from a mapping (``to_dict()`` output, a live context entry, a JSON row);
        tolerant of strings for evidence and numbers or ISO strings for times."""
        evidence: Any = raw.get("evidence") or {}
        if isinstance(evidence, str):
            try:
                evidence = json.loads(evidence)
            except ValueError:
                evidence = {"text": evidence}
        if not isinstance(evidence, Mapping):
            evidence = {"value": evidence}
        evidence = dict(evidence)
        lost = raw.get("lost_s", evidence.pop("lost_s", 0.0))
        start = naive_utc(raw.get("start_ts", raw.get("start")))
        return cls(
            rule=str(raw.get("rule", "")),
            severity=str(raw.get("severity", "info")).lower(),  # type: ignore[arg-type]
            entity=str(raw.get("entity") or ""),
            start=start or datetime(1970, 1, 1),
            end=naive_utc(raw.get("end_ts", raw.get("end"))),
            summary=str(raw.get("summary", "")),
            next_step=str(raw.get("next_step") or ""),
            evidence=evidence,
            lost_s=float(lost or 0.0),
            live=bool(raw.get("live", False)),
        )

    def evidence_json(self) -> str:
        return json.dumps(
            {**self.evidence, "lost_s": round(self.lost_s, 3)},
            sort_keys=True,
            default=_json_default,
        )

    def to_dict(self) -> dict[str, Any]:
        """The shape of ``session.live_findings`` entries and of ``report --json``."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "entity": self.entity,
            "summary": self.summary,
            "evidence": json.loads(self.evidence_json()),
            "next_step": self.next_step,
            "start_ts": self.start.isoformat(),
            "end_ts": None if self.end is None else self.end.isoformat(),
            "lost_s": round(self.lost_s, 3),
            "live": self.live,
        }

    def as_live(self) -> Finding:
        return replace(self, live=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def naive_utc(value: Any) -> datetime | None:
    """A naive-UTC datetime from epoch seconds, an ISO string or a datetime (naive = UTC)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), timezone.utc).replace(tzinfo=None)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value
    return None


def _rank(severity: str) -> int:
    return SEVERITY_RANK.get(severity, 0)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then most time lost, then earliest (reports, exports)."""
    return sorted(
        findings, key=lambda f: (-_rank(f.severity), -f.lost_s, f.start, f.rule, f.entity)
    )


def order_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then newest first (what a viewer lists on top)."""
    return sorted(findings, key=lambda f: (-_rank(f.severity), -f.start_ts))


def finding_from_row(row: Sequence[Any]) -> Finding:
    """A finding from a ``findings`` row: rule, severity, entity, start_ts, end_ts, summary,
    next_step, evidence, live (further columns ignored)."""
    rule, severity, entity, start, end, summary, next_step, evidence, is_live = row[:9]
    ev = json.loads(evidence or "{}") if isinstance(evidence, str) else dict(evidence or {})
    lost = float(ev.pop("lost_s", 0.0) or 0.0)
    return Finding(
        rule,
        severity,
        entity,
        naive_utc(start) or datetime(1970, 1, 1),
        naive_utc(end),
        summary,
        next_step or "",
        ev,
        lost,
        bool(is_live),
    )


def store_findings(
    con: duckdb.DuckDBPyConnection, run_id: str, findings: Sequence[Finding], *, live: bool
) -> None:
    """Replace the run's stored findings of one kind (live or post-run) with ``findings``."""
    detected = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = [
        (
            run_id,
            f.rule,
            f.severity,
            f.entity,
            f.start,
            f.end,
            f.summary,
            f.evidence_json(),
            f.next_step,
            live,
            detected,
        )
        for f in findings
    ]
    con.begin()
    try:
        con.execute("DELETE FROM findings WHERE run_id = ? AND live = ?", [run_id, live])
        if rows:
            con.executemany("INSERT INTO findings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        con.commit()
    except BaseException:
        con.rollback()
        raise


def load_findings(
    con: duckdb.DuckDBPyConnection, run_id: str, *, live: bool = False
) -> list[Finding]:
    """Findings stored for a run (post-run ones by default)."""
    rows = con.execute(
        "SELECT rule, severity, entity, start_ts, end_ts, summary, next_step, evidence, live "
        "FROM findings WHERE run_id = ? AND live = ?",
        [run_id, live],
    ).fetchall()
    return sort_findings(finding_from_row(r) for r in rows)
