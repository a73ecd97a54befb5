"""A side run in a real terminal emulator: its own tmux window of the asked size.

tmux parses everything the program writes, keeps the screen, answers the terminal queries a
TUI sends at start (Textual's synchronized-output probe, curses' terminfo lookups) and delivers
keys as a terminal does, so a TUI draws exactly as it would for a user. Each side gets a session
on a private tmux server (``-L``), killed at the end; nothing else of the user's tmux is
touched. The program is started directly (no shell), so the pane's pid is the measured process.
Its output is also teed by ``pipe-pane`` into a FIFO, read here, so a key's latency is timed
from the moment the answer reaches the terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks._common import ROOT, Measurable, Side

#: What tmux tells programs it is (falls back to screen's entry without the terminfo file).
TERM = "tmux-256color"


def tmux_available() -> bool:
    return subprocess.run(["tmux", "-V"], capture_output=True).returncode == 0


class TmuxChild(Measurable):
    """The interface of :class:`benchmarks._common.Child`, in a tmux pane of ``side.terminal``."""

    def __init__(self, side: Side) -> None:
        assert side.terminal is not None, "a tmux side needs a terminal size"
        super().__init__(side)
        self._dir = tempfile.TemporaryDirectory(prefix="aw-tmux-")
        self._socket = f"aw-bench-{os.getpid()}-{side.name}"
        self._target = side.name
        fifo = Path(self._dir.name) / "out"
        os.mkfifo(fifo, 0o600)
        cols, rows = side.terminal
        term = TERM if _has_terminfo(TERM) else "screen-256color"
        self._conf = Path(self._dir.name) / "tmux.conf"
        # No status line: the whole window is the program's. Nothing of ~/.tmux.conf is read.
        self._conf.write_text(f'set -g default-terminal "{term}"\nset -g status off\n')
        env = [f"{k}={v}" for k, v in side.env.items()]
        out = self._tmux(
            "new-session", "-d", "-s", self._target, "-x", str(cols), "-y", str(rows),
            "-c", str(ROOT), "-P", "-F", "#{pane_pid}",
            "env", *env, *side.argv,
        )  # fmt: skip
        self.pid = int(out.strip())
        self._tmux("pipe-pane", "-O", "-t", self._target, f"exec cat > {fifo}")
        threading.Thread(target=self._drain, args=(fifo,), daemon=True).start()
        self.proc = psutil.Process(self.pid)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self._socket, "-f", str(self._conf), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args[:2])}: {done.stderr.strip()}")
        return done.stdout

    def _drain(self, fifo: Path) -> None:
        with contextlib.suppress(OSError), open(fifo, "rb", buffering=0) as pipe:
            while data := pipe.read(65536):
                self._take(data)

    def screen(self) -> str:
        """What the terminal shows now."""
        try:
            return self._tmux("capture-pane", "-p", "-t", self._target)
        except (RuntimeError, subprocess.TimeoutExpired):
            return ""

    def type_keys(self, keys: bytes) -> None:
        self._tmux("send-keys", "-t", self._target, "-l", keys.decode())

    def stop(self) -> str:
        """Quit the way a user does (``q``), then SIGINT, then SIGKILL; the last screen."""
        last = self.screen()
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.type_keys(b"q")
        for sig, wait in ((None, 5.0), (signal.SIGINT, 20.0), (signal.SIGKILL, 5.0)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.alive():
                time.sleep(0.1)
            if not self.alive():
                break
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._tmux("kill-server")
        self._dir.cleanup()
        return last


def _has_terminfo(name: str) -> bool:
    return subprocess.run(["infocmp", name], capture_output=True).returncode == 0
