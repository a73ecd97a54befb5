"""What a rule reports: a :class:`Finding` with its evidence, and how findings are stored."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal

import duckdb

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: Mapping[str, int] = {"info": 0, "warning": 1, "critical": 2}


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
    end: datetime
    summary: str
    next_step: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    lost_s: float = 0.0
    live: bool = False

    @property
    def duration_s(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())

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
            "end_ts": self.end.isoformat(),
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


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then most time lost, then earliest."""
    return sorted(
        findings, key=lambda f: (-SEVERITY_RANK[f.severity], -f.lost_s, f.start, f.rule, f.entity)
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
    out = []
    for rule, severity, entity, start, end, summary, next_step, evidence, is_live in rows:
        ev = json.loads(evidence or "{}")
        lost = float(ev.pop("lost_s", 0.0) or 0.0)
        out.append(
            Finding(rule, severity, entity, start, end, summary, next_step, ev, lost, bool(is_live))
        )
    return sort_findings(out)
