"""The terminal UI while recording: ``run_live(context, control, job=...)`` blocks until the user
quits or the target ends.

When the target ends (or ``--duration`` passes) the header says so and the app exits after
:data:`END_GRACE_S` seconds, or at once on any key; the CLI then finalizes the run and prints
its report. For a launched job (``job``) the job comes first: Ctrl-C is a stop request of the
job's escalation (SIGINT, then SIGTERM, ...), never a kill, and ``q`` while the job runs asks
whether to stop it or to detach (the UI closes, recording goes on until the job exits). For an
attach, ``q`` and Ctrl-C only stop watching. A closed terminal (SIGHUP) closes the app at once.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

from textual import events
from textual.binding import Binding
from textual.message import Message

from agent.reader import LiveReader
from tui.app import AccelwatchApp
from tui.widgets.quit_dialog import DETACH, STOP, QuitDialog

if TYPE_CHECKING:
    from agent.context import LiveContext, RecordingControl

#: Seconds the "job ended" screen stays before the app exits by itself.
END_GRACE_S = 5.0
#: How often the app checks whether its terminal went away.
HANGUP_POLL_S = 0.2


class JobHandle(Protocol):
    """What the UI may do to a launched job (the session's stop escalation)."""

    @property
    def pid(self) -> int: ...

    log: str | None
    detached: bool
    hung_up: threading.Event

    def running(self) -> bool: ...

    def request_stop(self) -> str:
        """Send the next signal of the escalation; a sentence saying what was done."""
        ...


class RecordingEnded(Message):
    def __init__(self, reason: str, exit_code: int | None) -> None:
        super().__init__()
        self.reason = reason
        self.exit_code = exit_code


class LiveApp(AccelwatchApp):
    """Watches the session end in a thread worker; quitting never hurts a launched job."""

    #: The app's keys (the help screen lists these), with Ctrl-C as a shell's stop key.
    BINDINGS = [
        *(b for b in AccelwatchApp.BINDINGS if not (isinstance(b, Binding) and b.key == "ctrl+c")),
        Binding(
            "ctrl+c",
            "interrupt",
            "Stop the job",
            show=False,
            priority=True,
            tooltip="run: SIGINT to the job, again SIGTERM (attach: stop recording)",
        ),
    ]

    def __init__(
        self, reader: LiveReader, *, job: JobHandle | None = None, end_grace_s: float = END_GRACE_S
    ) -> None:
        super().__init__(reader)
        self.live_reader = reader
        self.job = job
        self.end_grace_s = end_grace_s
        self.ended: RecordingEnded | None = None

    def on_mount(self) -> None:
        # No super().on_mount(): Textual runs every class's handler in the MRO itself.
        # A plain daemon thread, not a Textual worker: the app must be able to exit (even on
        # a crash) while the session is still recording; closing the reader ends the wait.
        threading.Thread(target=self._watch_end, name="accelwatch-tui-end", daemon=True).start()
        if self.job is not None:
            self.set_interval(HANGUP_POLL_S, self._check_hangup)

    def _watch_end(self) -> None:
        reason = self.live_reader.wait_end()
        self.post_message(RecordingEnded(reason, self.live_reader.target_exit_code()))

    def _check_hangup(self) -> None:
        if self.job is not None and self.job.hung_up.is_set():
            self.exit(0)  # the terminal is gone: nothing to show, recording goes on headless

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

    def _job_running(self) -> bool:
        return self.job is not None and self.ended is None and self.job.running()

    def action_quit_viewer(self) -> None:
        if self._job_running():
            assert self.job is not None
            self.push_screen(QuitDialog(self.job.pid, self.job.log), self._quit_chosen)
            return
        self.live_reader.stop("user quit")
        self.exit(0)

    def _quit_chosen(self, choice: str | None) -> None:
        if self.job is None or not self.job.running():
            return
        if choice == STOP:
            self._stop_job()
        elif choice == DETACH:
            self.job.detached = True
            self.exit(0)

    def action_interrupt(self) -> None:
        """Ctrl-C: what a shell does to its foreground job (attach: stop watching)."""
        if self._job_running():
            self._stop_job()
        elif self.ended is not None:
            self.exit(0)
        else:
            self.action_quit_viewer()

    def _stop_job(self) -> None:
        assert self.job is not None
        message = self.job.request_stop()
        self.header.show(detail=message)
        self.notify(message, timeout=10)


def run_live(
    context: LiveContext, control: RecordingControl, *, job: JobHandle | None = None
) -> None:
    """Show the live UI until the user quits or detaches, or the recording ends; the caller
    finalizes (after a detach or a hangup, once the job has exited)."""
    reader = LiveReader(context, control)
    try:
        LiveApp(reader, job=job).run()
    finally:
        reader.close()
