"""``accelwatch view``: the same screen over a recorded run, read-only, with a time cursor.

The cursor starts at the end of the run (everything it found is listed). ``←``/``→`` move a
tick, ``[``/``]`` jump between findings (to the first tick where the finding shows), ``p``
plays the run forward; the evidence of a finding offers ``j`` to jump to its start. A run still
being recorded is followed: new ticks arrive and a cursor at the end stays at the end.
"""

from __future__ import annotations

import sys

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding

from agent.errors import UsageError
from agent.recorded import RecordedReader
from tui.app import AccelwatchApp, FrameReady
from tui.widgets.cursor import TimeCursor

PLAY_STEP_S = 0.25


class ReplayApp(AccelwatchApp):
    BINDINGS = [
        *(b for b in AccelwatchApp.BINDINGS if b.action != "pause"),
        Binding("p", "pause", "Play"),
        Binding("comma", "step(-1)", "-1 tick", show=False),
        Binding("full_stop", "step(1)", "+1 tick", show=False),
        Binding("left_square_bracket", "finding(-1)", "Prev finding"),
        Binding("right_square_bracket", "finding(1)", "Next finding"),
        Binding("home", "seek_edge(0)", "Start", show=False),
        Binding("end", "seek_edge(1)", "End", show=False),
        Binding("t", "focus_cursor", "Time cursor", show=False),
    ]

    def __init__(self, reader: RecordedReader) -> None:
        super().__init__(reader)
        self.recorded = reader
        self.playing = False
        self._player = None

    def compose_extra(self) -> ComposeResult:
        yield TimeCursor()

    def on_mount(self) -> None:
        # No super().on_mount(): Textual runs every class's handler in the MRO itself.
        self.query_one(TimeCursor).focus()

    def state_label(self) -> str:
        if self.recorded.following and not self.playing:
            return "● FOLLOWING" if self._at_end() else "⏸ FOLLOWING"
        return "▶ REPLAY" if self.playing else "⏸ REPLAY"

    def _at_end(self) -> bool:
        return self.recorded.cursor >= len(self.recorded.ticks) - 1

    def request_frame(self) -> None:
        self.header.show(state=self.state_label())
        self._show_cursor()
        self._load_frame(self.window_s)

    @work(thread=True, exclusive=True, group="frame")
    def _load_frame(self, window_s: float) -> None:
        self.post_message(FrameReady(self.recorded.frame(window_s)))

    def _show_cursor(self) -> None:
        ticks = self.recorded.ticks
        start = float(ticks[0]) / 1e6 if len(ticks) else self.recorded.run.started
        end = float(ticks[-1]) / 1e6 if len(ticks) else start
        self.query_one(TimeCursor).show(
            start=start,
            end=end,
            now=self.recorded.cursor_ts,
            index=self.recorded.cursor,
            count=len(ticks),
            marks=self.recorded.finding_times(),
            playing=self.playing,
        )

    def current_ts(self) -> float:
        return self.recorded.cursor_ts

    def seek(self, index: int) -> None:
        self.recorded.seek_index(index)
        self.request_frame()

    def on_time_cursor_seek(self, message: TimeCursor.Seek) -> None:
        if message.fraction is not None:
            self.seek(round(message.fraction * (len(self.recorded.ticks) - 1)))
        else:
            self.seek(self.recorded.cursor + message.ticks)

    def action_step(self, ticks: int) -> None:
        self.seek(self.recorded.cursor + ticks)

    def action_seek_edge(self, end: int) -> None:
        self.seek(len(self.recorded.ticks) - 1 if end else 0)

    def action_finding(self, direction: int) -> None:
        before = self.recorded.cursor
        if self.recorded.next_finding(direction) == before:
            self.notify("no more findings that way", timeout=2)
        self.request_frame()

    def action_focus_cursor(self) -> None:
        self.query_one(TimeCursor).focus()

    def action_pause(self) -> None:
        """In replay, ``p`` plays the run forward from the cursor (from the start if at the end)."""
        self.playing = not self.playing
        if self.playing:
            if self.recorded.cursor >= len(self.recorded.ticks) - 1:
                self.recorded.seek_index(0)
            self._player = self.set_interval(PLAY_STEP_S, self._advance)
        elif self._player is not None:
            self._player.stop()
        self.header.show(state=self.state_label())
        self.request_frame()

    def _advance(self) -> None:
        if self.recorded.cursor >= len(self.recorded.ticks) - 1:
            self.action_pause()
            return
        self.seek(self.recorded.cursor + 1)

    def jump_to(self, ts: float | None) -> None:
        if ts is not None:
            self.recorded.seek_start_of(ts)
            self.request_frame()


def run_replay(db_path: str, run: str | None) -> int:
    """Open the UI over a recorded run; errors (missing DB, unknown run, no terminal) raise
    before it opens (Textual without a terminal would write escape codes forever)."""
    reader = RecordedReader.open(db_path, run)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        reader.close()
        raise UsageError(
            "view needs a terminal (stdin and stdout); in scripts use `accelwatch report` "
            "or `accelwatch sql`"
        )
    try:
        return ReplayApp(reader).run() or 0
    finally:
        reader.close()
