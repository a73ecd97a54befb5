"""The headless live line's cadence: every tick on a terminal; in a log, one a minute, with a
fault's line (and a change in what is wrong) at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.app.cli import LIVE_EVERY_IN_LOGS_S, build_parser
from agent.app.commands import LiveLinePrinter
from agent.model import Batch
from agent.snapshot import SnapshotHub


@dataclass
class _Config:
    live_every: float | None = None


@dataclass
class _Context:
    health: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Session:
    config: _Config
    hub: SnapshotHub = field(default_factory=SnapshotHub)
    context: _Context = field(default_factory=_Context)


def _ticks(printer: LiveLinePrinter, session: _Session, seconds: range, capsys) -> list[str]:
    for t in seconds:
        session.hub.publish(float(t), [Batch("host", float(t), ["host"], ["host.cpu.utilization"],
                                             [0.5])], {})  # fmt: skip
        printer.maybe_print()
    return [ln for ln in capsys.readouterr().err.splitlines() if ln]


def test_on_a_terminal_every_tick_prints_a_line(capsys):
    session = _Session(_Config())
    lines = _ticks(LiveLinePrinter(session, terminal=True), session, range(10), capsys)
    assert len(lines) == 10 and all("host=50%" in ln for ln in lines)


def test_in_a_log_one_line_a_minute_and_faults_at_once(capsys):
    session = _Session(_Config())
    printer = LiveLinePrinter(session, terminal=False)
    assert printer.every == LIVE_EVERY_IN_LOGS_S == 60.0
    assert len(_ticks(printer, session, range(0, 150), capsys)) == 3  # at 0, 60 and 120 s
    session.context.health = {"store.state": "disk full: 3 ticks buffered, 0 dropped"}
    lines = _ticks(printer, session, range(150, 160), capsys)
    assert len(lines) == 1 and "store: disk full" in lines[0], lines  # at once (150 s)
    session.context.health = {"store.state": "disk full: 12 ticks buffered, 0 dropped"}
    assert _ticks(printer, session, range(160, 170), capsys) == []  # only a count changed
    session.context.health = {"store.state": "ok"}
    lines = _ticks(printer, session, range(170, 172), capsys)
    assert len(lines) == 1 and "disk full" not in lines[0]  # the fault went: at once


def test_in_a_log_a_clock_stepped_back_does_not_silence_the_live_line(capsys):
    """The period is measured on the samples' wall clock, which may step back (NTP, a VM
    restored)."""
    session = _Session(_Config())
    printer = LiveLinePrinter(session, terminal=False)
    assert len(_ticks(printer, session, range(10_000, 10_030), capsys)) == 1  # at 10,000 s
    # the wall clock steps back an hour: ten minutes of ticks, still once a minute
    lines = _ticks(printer, session, range(6_400, 7_000), capsys)
    assert len(lines) >= 9, lines


def test_live_every_sets_the_period_anywhere(capsys):
    session = _Session(_Config(live_every=5.0))
    lines = _ticks(LiveLinePrinter(session, terminal=True), session, range(20), capsys)
    assert len(lines) == 4


def test_live_every_is_checked_before_anything_starts(capsys):
    parser = build_parser()
    assert parser.parse_args(["run", "--live-every", "2.5", "--", "true"]).live_every == 2.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["run", "--live-every", bad, "--", "true"])
        assert exit_info.value.code == 2
