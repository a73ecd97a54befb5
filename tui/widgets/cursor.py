"""Replay's time cursor: a track over the whole run with finding markers; click to seek."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.message import Message
from textual.widget import Widget

from tui.format import duration


def track_positions(times: Sequence[float], start: float, end: float, width: int) -> list[int]:
    """Column of each time on a track of ``width`` cells spanning [start, end]."""
    span = max(end - start, 1e-9)
    return [min(max(int((t - start) / span * (width - 1) + 0.5), 0), width - 1) for t in times]


class TimeCursor(Widget, can_focus=True):
    """``←``/``→`` one tick, ``shift+←/→`` a tenth of the run; the app owns the position."""

    HELP_SECTION = "time cursor, when focused"
    COMPONENT_CLASSES = {"time-cursor--track", "time-cursor--mark", "time-cursor--head"}
    BINDINGS = [
        Binding("left", "step(-1)", "-1 tick", show=False),
        Binding("right", "step(1)", "+1 tick", show=False),
        Binding("shift+left", "big_step(-1)", "-10%", show=False),
        Binding("shift+right", "big_step(1)", "+10%", show=False),
    ]

    class Seek(Message):
        """Move the cursor: to a fraction of the run, or by a number of ticks."""

        def __init__(self, *, fraction: float | None = None, ticks: int = 0) -> None:
            super().__init__()
            self.fraction = fraction
            self.ticks = ticks

    def __init__(self) -> None:
        super().__init__(id="cursor")
        self.start = self.end = self.now = 0.0
        self.index = self.count = 0
        self.marks: list[float] = []
        self.playing = False

    def show(
        self,
        *,
        start: float,
        end: float,
        now: float,
        index: int,
        count: int,
        marks: Sequence[float],
        playing: bool,
    ) -> None:
        self.start, self.end, self.now = start, end, now
        self.index, self.count, self.marks, self.playing = index, count, list(marks), playing
        self.refresh()

    def render(self) -> Text:
        if not self.count:
            return Text("this run recorded no samples")
        width = max(self.content_size.width, 10)
        track = ["─"] * width
        for col in track_positions(self.marks, self.start, self.end, width):
            track[col] = "◆"
        head = track_positions([self.now], self.start, self.end, width)[0]
        out = Text(no_wrap=True)
        out.append("".join(track[:head]), self.get_component_rich_style("time-cursor--track"))
        out.append("●", self.get_component_rich_style("time-cursor--head"))
        out.append("".join(track[head + 1 :]), self.get_component_rich_style("time-cursor--track"))
        for col in track_positions(self.marks, self.start, self.end, width):
            if col != head:
                out.stylize(self.get_component_rich_style("time-cursor--mark"), col, col + 1)
        state = "▶ playing" if self.playing else "paused"
        out.append(
            f"\n{duration(self.now - self.start)} / {duration(self.end - self.start)}"
            f"  tick {self.index + 1}/{self.count}  {state}  ◆ finding"
            "  ←/→ tick  shift+←/→ 10%  [ ] findings"
        )
        return out

    def on_click(self, event: Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y != 0:  # the track is the first line
            return
        width = max(self.content_size.width, 2)
        self.post_message(self.Seek(fraction=min(max(offset.x / (width - 1), 0.0), 1.0)))

    def action_step(self, ticks: int) -> None:
        self.post_message(self.Seek(ticks=ticks))

    def action_big_step(self, direction: int) -> None:
        self.post_message(self.Seek(ticks=direction * max(self.count // 10, 1)))
