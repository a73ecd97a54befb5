"""``q`` while a launched job still runs: stop the job, or detach and let the recording go on."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

#: What :class:`QuitDialog` returns: stop the job, detach the UI, or nothing (cancel).
STOP, DETACH = "stop", "detach"


class QuitDialog(ModalScreen[str | None]):
    """Quitting must not silently kill the job: the user picks what happens to it."""

    BINDINGS = [
        Binding("s", "choose('stop')", "Stop the job"),
        Binding("d", "choose('detach')", "Detach"),
        Binding("escape,c,n", "choose('')", "Cancel"),
    ]

    def __init__(self, pid: int, log: str | None) -> None:
        super().__init__()
        self.job_pid = pid
        self.job_log = log

    def compose(self) -> ComposeResult:
        output = (
            f"its output keeps going to {self.job_log}"
            if self.job_log
            else "its output is unchanged"
        )
        with Vertical(id="quit-box") as box:
            box.border_title = f"The job (pid {self.job_pid}) is still running"
            yield Static(
                "[b]s[/b]  stop the job: SIGINT now, like Ctrl-C (again: SIGTERM); "
                "recording goes on until it exits\n"
                f"[b]d[/b]  detach: close this screen, keep recording until the job exits; "
                f"{output}\n"
                "[b]esc[/b]  cancel"
            )

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice or None)
