"""The terminal UI while recording: ``run_live(session)`` blocks until the user quits or the
target ends.

When the target ends (or ``--duration`` passes) the header says so and the app exits after
:data:`END_GRACE_S` seconds, or at once on any key; the CLI then finalizes the run and prints
its report. ``q`` (or ctrl+q) stops recording immediately, and so does a SIGTERM/SIGHUP that
stops the recording.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from textual import events
from textual.message import Message

from agent.reader import LiveReader
from tui.app import AccelwatchApp

if TYPE_CHECKING:
    from agent.context import LiveContext, RecordingControl

#: Seconds the "job ended" screen stays before the app exits by itself.
END_GRACE_S = 5.0


class RecordingEnded(Message):
    def __init__(self, reason: str, exit_code: int | None) -> None:
        super().__init__()
        self.reason = reason
        self.exit_code = exit_code


class LiveApp(AccelwatchApp):
    """Watches the session end in a thread worker; quitting asks the session to stop."""

    def __init__(self, reader: LiveReader, *, end_grace_s: float = END_GRACE_S) -> None:
        super().__init__(reader)
        self.live_reader = reader
        self.end_grace_s = end_grace_s
        self.ended: RecordingEnded | None = None

    def on_mount(self) -> None:
        # No super().on_mount(): Textual runs every class's handler in the MRO itself.
        # A plain daemon thread, not a Textual worker: the app must be able to exit (even on
        # a crash) while the session is still recording; closing the reader ends the wait.
        threading.Thread(target=self._watch_end, name="accelwatch-tui-end", daemon=True).start()

    def _watch_end(self) -> None:
        reason = self.live_reader.wait_end()
        self.post_message(RecordingEnded(reason, self.live_reader.target_exit_code()))

    def state_label(self) -> str:
        if self.ended is not None:
            return "■ ENDED"
        return super().state_label()

    def on_recording_ended(self, message: RecordingEnded) -> None:
        if message.reason == "user quit":
            return
        if message.reason.startswith("signal"):  # asked from outside to stop: no lingering
            self.exit(0)
            return
        self.ended = message
        what = message.reason
        if message.exit_code is not None:
            what += f" (exit code {message.exit_code})"
        self.request_frame()
        self.header.show(
            state=self.state_label(),
            detail=f"{what} · closing in {self.end_grace_s:g}s, any key closes now",
        )
        self.set_timer(self.end_grace_s, lambda: self.exit(0))

    def on_key(self, event: events.Key) -> None:
        if self.ended is not None:
            event.stop()
            self.exit(0)

    def action_quit_viewer(self) -> None:
        self.live_reader.stop("user quit")
        self.exit(0)


def run_live(context: LiveContext, control: RecordingControl) -> None:
    """Show the live UI until the user quits or the recording ends; the caller finalizes."""
    reader = LiveReader(context, control)
    try:
        LiveApp(reader).run()
    finally:
        reader.close()
