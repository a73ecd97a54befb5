"""TUI benchmark: the live screen's cost while the agent samples 8 GPUs and a 32-process tree.

The app runs for real in a pseudo-terminal (not headless: every refresh is laid out, rendered
and written as escape codes) over a real Session at 1 Hz: simulated NVML (scenario
``healthy``, 8 H100s), the process collector on a real 32-process tree, the host collector.

Prints, in one run:
  1. UI-thread CPU per refresh as a share of the 1 s refresh period (target <= 5 %), measured
     over a quiet window with no key presses, next to the sampler's own CPU per tick;
  2. key-press-to-render latency: from writing ``s`` (sort) into the terminal until the
     screen output carrying its result (the process panel title "sort ...") comes back, while the
     agent keeps sampling (target median <= 50 ms).

    python benchmarks/bench_tui.py [--seconds 20] [--keys 20] [--size 160x48]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import statistics
import struct
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, process_tree, verdict  # noqa: E402

CPU_TARGET = 0.05
LATENCY_TARGET_S = 0.050
SORT_ORDER = ("cpu", "rss", "gpu_mem", "io", "tree")
_ESCAPES = re.compile(rb"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>])")


# -- child: the app in the pseudo-terminal -------------------------------------------------
def run_child(args: argparse.Namespace) -> None:
    from agent.app.session import Session, SessionConfig, SessionControl
    from agent.reader import LiveReader
    from tui.live import LiveApp
    from tui.views import gpu_entities

    session = Session(
        SessionConfig(
            db_path=args.db, interval=1.0, simulate="healthy", headless=False, live_analysis=False
        )
    )
    session.attach(args.pid)
    reader = LiveReader(session.context, SessionControl(session))
    sampler_cpu: list[float] = []

    class MeasuredApp(LiveApp):
        """Counts refreshes and reads the UI thread's CPU clock over the quiet window."""

        refreshes = 0

        def apply(self, frame) -> None:
            super().apply(frame)
            self.refreshes += 1

        def on_mount(self) -> None:  # Textual also runs LiveApp's and the base's handlers
            self.set_timer(args.warmup, self._start_window)

        def _start_window(self) -> None:
            self._t0 = (
                time.thread_time(),
                time.monotonic(),
                self.refreshes,
                session.sampler.stats.ticks,
            )
            self.set_timer(args.seconds, self._end_window)

        def _end_window(self) -> None:
            cpu0, wall0, refreshes0, ticks0 = self._t0
            result = {
                "ui_cpu_s": time.thread_time() - cpu0,
                "wall_s": time.monotonic() - wall0,
                "refreshes": self.refreshes - refreshes0,
                "ticks": session.sampler.stats.ticks - ticks0,
                "gpus": len(gpu_entities(self.frame.snapshot)) if self.frame else 0,
                "processes": len(self.frame.snapshot.entities("process")) if self.frame else 0,
                "sampler_cpu_per_tick_s": statistics.median(sampler_cpu) if sampler_cpu else 0,
            }
            Path(args.out).write_text(json.dumps(result))

    original_step = session.sampler.step

    def timed_step(now=None):
        started = time.thread_time()
        batches = original_step(now)
        sampler_cpu.append(time.thread_time() - started)
        return batches

    session.sampler.step = timed_step
    try:
        MeasuredApp(reader).run()
    finally:
        reader.close()
        session.finish()


# -- parent: drive the terminal ------------------------------------------------------------
class PtyReader(threading.Thread):
    """Collects the child's terminal output with arrival times."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.chunks: list[tuple[float, bytes]] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.chunks.append((time.perf_counter(), data))

    def first_after(self, since: float, marker: bytes, timeout: float = 3.0) -> float | None:
        """Arrival time of the chunk that completes ``marker`` (escape codes ignored)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                stamps = [(t, d) for t, d in self.chunks if t >= since]
            seen = b""
            for t, d in stamps:
                seen += d
                if marker in _ESCAPES.sub(b"", seen):
                    return t
            time.sleep(0.002)
        return None


def run_parent(args: argparse.Namespace) -> int:
    cols, rows = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp, process_tree(32) as root:
        out = Path(tmp) / "result.json"
        pid, fd = pty.fork()
        if pid == 0:  # child: become the app
            os.environ["TERM"] = "xterm-256color"
            os.execv(
                sys.executable,
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--pid",
                    str(root),
                    "--db",
                    str(Path(tmp) / "bench.duckdb"),
                    "--out",
                    str(out),
                    "--seconds",
                    str(args.seconds),
                    "--warmup",
                    str(args.warmup),
                ],
            )
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        reader = PtyReader(fd)
        reader.start()
        deadline = time.monotonic() + args.warmup + args.seconds + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        latencies = []
        for press in range(args.keys):
            expected = SORT_ORDER[press % len(SORT_ORDER)]
            time.sleep(0.6)
            sent = time.perf_counter()
            os.write(fd, b"s")
            seen = reader.first_after(sent, f"processes · sort {expected}".encode())
            if seen is not None:
                latencies.append(seen - sent)
        os.write(fd, b"q")
        os.waitpid(pid, 0)
        if not out.exists():
            screen = _ESCAPES.sub(b"", b"".join(d for _, d in reader.chunks))
            print(
                "bench_tui: the app did not report its measurements:\n"
                + screen[-3000:].decode("utf-8", "replace"),
                file=sys.stderr,
            )
            return 1
        result = json.loads(out.read_text())
    refreshes = max(result["refreshes"], 1)
    cpu_per_refresh = result["ui_cpu_s"] / refreshes
    # At 1 Hz the period is 1 s; dividing the window's whole UI CPU by its wall time also
    # charges timers, toasts and anything else the UI did between refreshes.
    share = result["ui_cpu_s"] / result["wall_s"]
    median = statistics.median(latencies) if latencies else float("inf")
    print_table(
        f"TUI at {args.size}: {result['gpus']} GPU entities, {result['processes']} processes, "
        f"1 Hz, {result['ticks']} ticks and {result['refreshes']} refreshes in "
        f"{result['wall_s']:.1f} s",
        [
            ("UI CPU per refresh (ms)", f"{cpu_per_refresh * 1e3:.1f}", "", ""),
            (
                "UI CPU time / wall time at 1 Hz (share of the period)",
                f"{share:.1%}",
                f"<= {CPU_TARGET:.0%}",
                verdict(share <= CPU_TARGET),
            ),
            (
                "sampler CPU per tick, for scale (ms)",
                f"{result['sampler_cpu_per_tick_s'] * 1e3:.1f}",
                "",
                "",
            ),
            (
                f"key-to-render latency, median of {len(latencies)}/{args.keys} (ms)",
                f"{median * 1e3:.1f}",
                f"<= {LATENCY_TARGET_S * 1e3:.0f}",
                verdict(median <= LATENCY_TARGET_S and len(latencies) == args.keys),
            ),
            (
                "key-to-render latency, max (ms)",
                f"{max(latencies) * 1e3:.1f}" if latencies else "-",
                "",
                "",
            ),
        ],
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="quiet measuring window")
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--size", default="160x48", help="terminal COLUMNSxROWS")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return 0
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
