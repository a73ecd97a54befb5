"""End to end: the real CLI in a terminal (tmux) attaches to a real process, shows the UI,
quits on ``q``; the database then holds a finalized run with samples."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid

import pytest

from agent.store import connect
from tests.helpers import accelwatch, wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Terminal:
    """A detached 80×24 tmux session on a private socket; ``screen()`` is what a user sees."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"accelwatch-test-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        line = f"env {exports} {shlex.join(command)}; echo EXIT=$?; sleep 30"
        self._tmux("new-session", "-d", "-x", "80", "-y", "24", line)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    def send(self, key: str) -> None:
        self._tmux("send-keys", key)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        assert wait_until(lambda: text in self.screen(), timeout=timeout, step=0.2), self.screen()
        return self.screen()

    def close(self) -> None:
        self._tmux("kill-server")


@pytest.fixture
def sleeper():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


def test_attach_opens_the_ui_and_q_finalizes_the_run(tmp_path, sleeper):
    db = tmp_path / "tui.duckdb"
    term = Terminal(
        accelwatch(
            "attach", str(sleeper.pid), "--db", str(db), "--interval", "0.2", "--name", "pty-run"
        ),
        {"TERM": "xterm-256color"},
    )
    try:
        screen = term.wait_for("samples")
        assert "pty-run" in screen and f"pid {sleeper.pid}" in screen and "● REC" in screen
        screen = term.wait_for("PID▼")
        assert wait_until(
            lambda: re.search(rf"\s{sleeper.pid}\s+M\s+\d+%", term.screen()), timeout=10
        ), term.screen()  # its row in the process tree
        screen = term.wait_for("q Quit")
        assert "No accelerators: nvml" in screen or "gpu0" in screen
        term.send("q")
        screen = term.wait_for("EXIT=")
    finally:
        term.close()
    assert "EXIT=0" in screen, screen
    con = connect(db, read_only=True)
    try:
        name, status, ended = con.execute("SELECT name, status, ended FROM runs").fetchone()
        samples = con.execute("SELECT count(*) FROM samples").fetchone()[0]
        pids = {
            r[0]
            for r in con.execute(
                "SELECT DISTINCT entity FROM samples WHERE source = 'process'"
            ).fetchall()
        }
    finally:
        con.close()
    assert (name, status) == ("pty-run", "stopped") and ended is not None
    assert samples > 0 and str(sleeper.pid) in pids
    assert sleeper.poll() is None  # attach never touches the target


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ACCELWATCH_SLOW"), reason="set ACCELWATCH_SLOW=1")
def test_view_replays_the_recording_in_a_terminal(tmp_path, sleeper):
    """Replay is covered by pilot tests; this also records via the CLI, so it is slow."""
    db = tmp_path / "view.duckdb"
    rec = subprocess.run(
        accelwatch(
            "attach",
            str(sleeper.pid),
            "--db",
            str(db),
            "--headless",
            "--duration",
            "1",
            "--interval",
            "0.2",
            "--name",
            "rec",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rec.returncode == 0, rec.stderr
    term = Terminal(
        accelwatch("view", "rec", "--db", str(db)), {"TERM": "xterm-256color", "NO_COLOR": "1"}
    )
    try:
        screen = term.wait_for("REPLAY")
        assert "rec" in screen
        term.wait_for("tick")
        term.send("q")
        screen = term.wait_for("EXIT=")
    finally:
        term.close()
    assert "EXIT=0" in screen, screen


def test_run_shows_the_job_ending_then_exits_with_its_code(tmp_path):
    db = tmp_path / "ended.duckdb"
    job = [sys.executable, "-c", "import time, sys; time.sleep(1.5); sys.exit(3)"]
    term = Terminal(
        accelwatch("run", "--db", str(db), "--interval", "0.2", "--name", "short", "--", *job),
        {"TERM": "xterm-256color"},
    )
    try:
        screen = term.wait_for("ENDED")
        assert "target exited (exit code 3)" in screen and "closing in 5s" in screen
        screen = term.wait_for("EXIT=", timeout=20)  # closes by itself, no key pressed
    finally:
        term.close()
    assert "EXIT=3" in screen, screen
    con = connect(db, read_only=True)
    try:
        status, exit_code = con.execute("SELECT status, exit_code FROM runs").fetchone()
    finally:
        con.close()
    assert (status, exit_code) == ("finished", 3)
