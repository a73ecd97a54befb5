"""Two header lines: what is recorded (run, target, rank, time) and how healthy recording is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.health_text import health_phrases
from agent.model import RunInfo
from agent.reader import Frame, rank_label
from tui.format import duration
from tui.widgets.lines import Lines, LineWidget


class RunHeader(LineWidget):
    """``state`` is a short word with a symbol (REC, PAUSED, ENDED, REPLAY) so it reads in mono."""

    COMPONENT_CLASSES = {
        "run-header--state",
        "run-header--name",
        "run-header--warn",
        "run-header--dim",
    }

    def __init__(self, run: RunInfo) -> None:
        super().__init__(id="header")
        self.run = run
        self.frame: Frame | None = None
        self.state = "● REC"
        self.detail = ""
        #: The sparkline window, shown so ``w`` has a visible effect.
        self.window_s = 60.0

    def show(
        self, frame: Frame | None = None, *, state: str | None = None, detail: str | None = None
    ) -> None:
        if frame is not None:
            self.frame = frame
        if state is not None:
            self.state = state
        if detail is not None:
            self.detail = detail
        self.redraw()

    def draw(self, width: int) -> Lines:
        run = self.run
        style = self.part_style
        out = Lines()
        out.append(f" {self.state} ", style("run-header--state"))
        # A name taken from a command line can hold newlines (``python -c "..."``): one line.
        out.append(f" {' '.join(run.name.split())}", style("run-header--name"))
        if run.pid is not None:
            out.append(f"  pid {run.pid}")
        rank = rank_label(run.env)
        if rank:
            out.append(f"  {rank}")
        if self.frame is not None:
            out.append(f"  ⏱ {duration(self.frame.snapshot.ts - run.started)}")
        out.append(f"  every {run.interval:g}s · {self.window_s / 60:g}m window")
        if run.cmdline:  # last: the longest part, cut first on narrow terminals
            command = " ".join(" ".join(part.split()) for part in run.cmdline)  # no newlines
            out.append(f"  {command}", style("run-header--dim"))
        out.append("\n")
        if self.detail:  # first on its line so 80 columns still show it
            out.append(f" {self.detail} ·", style("run-header--warn"))
        if self.frame is not None:
            self._health(out, self.frame.health, self.frame.notices)
        out.append(f" · db {run.db_path}", style("run-header--dim"))
        return out

    def _health(self, out: Lines, health: Mapping[str, Any], notices: Mapping[str, str]) -> None:
        warn = self.part_style("run-header--warn")
        out.append(f" {int(health.get('samples', 0)):,} samples")
        for key, label in (("dropped_ticks", "dropped ticks"), ("missed_ticks", "missed ticks")):
            if health.get(key):
                out.append(f" · {health[key]} {label}", warn)
        disabled = dict(health.get("disabled") or {})
        if disabled:
            out.append(f" · disabled: {', '.join(sorted(disabled))}", warn)
        unavailable = sorted(set(notices) - set(disabled))
        if unavailable:
            out.append(f" · unavailable: {', '.join(unavailable)}")
        phrases = health_phrases(health)  # states in words; internal counters stay hidden
        store_said = any(p.owner == "store" and p.bad for p in phrases)
        if health.get("store_error") and not store_said:
            out.append(f" · store: {health['store_error']}", warn)
        for phrase in phrases:
            out.append(f" · {phrase.text}", warn if phrase.bad else "")
