"""The quiet driver, in a real terminal (tmux): keys and a lone Esc arrive as with Textual's
own driver, ``q`` exits at once, and an idle app's threads do not wake ten times a second."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

ROOT = Path(__file__).resolve().parents[2]
APP = """
import os, sys
sys.path.insert(0, {root!r})
from textual.app import App
from textual.widgets import Static
from tui.driver import quiet

class Keys(App):
    def get_driver_class(self):
        return quiet(super().get_driver_class()) if {quiet!r} else super().get_driver_class()
    def compose(self):
        yield Static("starting", id="k")
    def on_mount(self):
        self.query_one("#k").update("ready " + type(self._driver).__name__)
    def on_key(self, event):
        if event.key == "q":
            self.exit()
        else:
            self.query_one("#k").update("key " + event.key)

Keys().run()
print("PID", os.getpid(), flush=True)
"""


class Window:
    def __init__(self, where: Path, quiet: bool) -> None:
        self.socket = f"aw-driver-{uuid.uuid4().hex[:8]}"
        script = where / f"keys_{quiet}.py"
        script.write_text(APP.format(root=str(ROOT), quiet=quiet))
        command = (
            f"env -u COLUMNS -u LINES TERM=xterm-256color {shlex.quote(sys.executable)} {shlex.quote(str(script))};"
            " echo EXIT=$?; sleep 30"
        )
        self._tmux("new-session", "-d", "-x", "60", "-y", "8", command)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        ).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    def send(self, key: str) -> None:
        self._tmux("send-keys", key)

    def app_pid(self) -> int:
        shell = int(self._tmux("list-panes", "-F", "#{pane_pid}").split()[0])
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        return int(children[0])

    def close(self) -> None:
        self._tmux("kill-server")


def _wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` so far (each sleep that ended)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


def _idle_wakeups(window: Window) -> int:
    assert wait_until(lambda: "ready" in window.screen(), timeout=20, step=0.2), repr(
        window.screen()
    )
    pid = window.app_pid()
    time.sleep(1.0)
    before = _wakeups(pid)
    time.sleep(2.0)
    return _wakeups(pid) - before


def test_an_idle_app_on_the_quiet_driver_does_not_poll_for_input(tmp_path):
    quiet, textual = Window(tmp_path, quiet=True), Window(tmp_path, quiet=False)
    try:
        ours, theirs = _idle_wakeups(quiet), _idle_wakeups(textual)
        assert "QuietLinuxDriver" in quiet.screen()
    finally:
        quiet.close()
        textual.close()
    assert theirs >= 15, theirs  # Textual's input thread: 10 a second
    assert ours <= 5, ours


def test_keys_and_a_lone_escape_arrive_and_q_exits_at_once(tmp_path):
    window = Window(tmp_path, quiet=True)
    try:
        assert wait_until(lambda: "ready" in window.screen(), timeout=20, step=0.2), repr(
            window.screen()
        )
        window.send("x")
        assert wait_until(lambda: "key x" in window.screen(), timeout=5, step=0.1)
        window.send("Escape")  # completed by the parser's timeout, not by another key
        assert wait_until(lambda: "key escape" in window.screen(), timeout=5, step=0.1)
        sent = time.monotonic()
        window.send("q")
        assert wait_until(lambda: "EXIT=0" in window.screen(), timeout=10, step=0.05)
        assert time.monotonic() - sent < 2.0
    finally:
        window.close()
