"""How a run's times are worded: wall clock for a recording, the trace's own seconds for an
imported trace ("t = 2,160 s"), so a finding reads as its trace's publisher described it.

An imported run (mode ``imported``, written by ``accelwatch import``) starts at its trace's
origin; its samples sit on that axis (for a trace of relative times the origin is epoch 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

#: The ``runs.mode`` of a run made by ``accelwatch import``.
IMPORTED_MODE = "imported"


@dataclass(frozen=True)
class TimeAxis:
    """Words for instants of one run: ``t = 2,160 s`` (trace) or ``14:03:12 UTC`` (clock)."""

    started: float
    trace: bool = False

    def offset(self, when: datetime | float) -> float:
        """Seconds since the run (trace) started."""
        return _epoch(when) - self.started

    def at(self, when: datetime | float) -> str:
        if self.trace:
            return f"t = {_seconds(self.offset(when))} s"
        return f"{datetime.fromtimestamp(_epoch(when), timezone.utc):%H:%M:%S} UTC"

    def span(self, start: datetime | float, end: datetime | float | None) -> str:
        """``from t = 2,161 s to t = 2,481 s`` / ``from 14:03:12 to 14:08:30 UTC``."""
        if end is None:
            return f"since {self.at(start)}"
        if self.trace:
            return f"from {self.at(start)} to {self.at(end)}"
        a = datetime.fromtimestamp(_epoch(start), timezone.utc)
        b = datetime.fromtimestamp(_epoch(end), timezone.utc)
        return f"from {a:%H:%M:%S} to {b:%H:%M:%S} UTC"

    def range_text(self, start: datetime | float, end: datetime | float | None) -> str:
        """The compact form a report's finding header uses: ``t = 2,161-2,481 s``."""
        if not self.trace:
            a = datetime.fromtimestamp(_epoch(start), timezone.utc)
            if end is None:
                return f"{a:%H:%M:%S}-now UTC"
            b = datetime.fromtimestamp(_epoch(end), timezone.utc)
            return f"{a:%H:%M:%S}-{b:%H:%M:%S} UTC"
        if end is None:
            return f"t = {_seconds(self.offset(start))} s-now"
        return f"t = {_seconds(self.offset(start))}-{_seconds(self.offset(end))} s"


def _seconds(value: float) -> str:
    """``2,160`` or, for short traces, ``2.5``."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}".rstrip("0").rstrip(".") or "0"


def _epoch(when: datetime | float) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    return float(when)


def axis_of_run(mode: str | None, started: float | None) -> TimeAxis:
    return TimeAxis(float(started or 0.0), trace=mode == IMPORTED_MODE)


def run_time_axis(con: Any, run_id: str) -> TimeAxis:
    """The axis of a stored run (``con``: DuckDB or a read connection); clock if unknown."""
    row = con.execute(
        "SELECT mode, epoch_us(started) FROM runs WHERE run_id = ? LIMIT 1", [run_id]
    ).fetchone()
    if row is None:
        return TimeAxis(0.0)
    mode, started = row
    return axis_of_run(mode, None if started is None else started / 1e6)
