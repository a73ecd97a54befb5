"""Review of the headless live line's cadence: its period is measured on the samples' wall
clock, which may step back (NTP, a VM restored)."""

from __future__ import annotations

from agent.app.commands import LiveLinePrinter
from tests.unit.test_live_line_cadence import _Config, _Session, _ticks


def test_in_a_log_a_clock_stepped_back_does_not_silence_the_live_line(capsys):
    session = _Session(_Config())
    printer = LiveLinePrinter(session, terminal=False)
    assert len(_ticks(printer, session, range(10_000, 10_030), capsys)) == 1  # at 10,000 s
    # the wall clock steps back an hour: ten minutes of ticks, still once a minute
    lines = _ticks(printer, session, range(6_400, 7_000), capsys)
    assert len(lines) >= 9, lines
