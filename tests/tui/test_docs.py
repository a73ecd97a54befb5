"""docs/tui.md lists every key the UI binds (read from the bindings themselves)."""

from __future__ import annotations

import re
from pathlib import Path

from textual.binding import Binding
from textual.keys import format_key

from tui.app import AccelwatchApp
from tui.replay import ReplayApp
from tui.widgets.cursor import TimeCursor
from tui.widgets.findings import EvidenceScreen
from tui.widgets.help import HelpScreen
from tui.widgets.processes import ProcessTable
from tui.widgets.timeseries import TimeSeriesScreen

DOC = Path(__file__).resolve().parents[2] / "docs" / "tui.md"


def _documented_keys() -> set[str]:
    prose = re.sub(r"```.*?```", "", DOC.read_text(), flags=re.S)  # drop code blocks
    return {m.lower() for m in re.findall(r"`([^`]+)`", prose)}


def _token(key: str) -> str:
    *modifiers, base = key.strip().split("+")
    shown = "enter" if base == "enter" else format_key(base)
    return "+".join([*modifiers, shown]).lower()


def test_every_bound_key_is_documented():
    owners = (
        AccelwatchApp,
        ReplayApp,
        TimeSeriesScreen,
        EvidenceScreen,
        HelpScreen,
        ProcessTable,
        TimeCursor,
    )
    keys = {
        _token(key)
        for owner in owners
        for binding in owner.BINDINGS
        if isinstance(binding, Binding)
        for key in binding.key.split(",")
    }
    assert len(keys) > 20
    assert keys - _documented_keys() == set()
