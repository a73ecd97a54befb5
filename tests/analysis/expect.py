"""Assertions on findings: which rule fired, on which entity, over which window."""

from __future__ import annotations

from datetime import datetime

from agent.analysis.engine import finding_windows
from agent.analysis.finding import Finding
from tests.analysis.recording import T0


def of_rule(findings: list[Finding], rule: str) -> list[Finding]:
    return [f for f in findings if f.rule == rule]


def entities(findings: list[Finding], rule: str) -> set[str]:
    return {f.entity for f in of_rule(findings, rule)}


def seconds(ts: datetime) -> float:
    """Run time of a naive-UTC timestamp, in seconds since the recording started."""
    return (ts - datetime(1970, 1, 1)).total_seconds() - T0


def windows_s(f: Finding) -> list[tuple[float, float]]:
    return [(seconds(a), seconds(b)) for a, b in finding_windows(f)]


def assert_window(f: Finding, start_s: float, end_s: float, tolerance_s: float = 4.0) -> None:
    """The finding spans about [start_s, end_s] of the run."""
    got = (seconds(f.start), seconds(f.end))
    assert abs(got[0] - start_s) <= tolerance_s and abs(got[1] - end_s) <= tolerance_s, (
        f"{f.rule} on {f.entity}: window {got}, expected about ({start_s}, {end_s})"
    )
