"""Shared harness of the benchmarks: child processes measured whole, over the same windows.

Every side of a comparison (the agent, a bare loop, nvitop) is its own child process. All
sides run at once for the whole benchmark (each uses a few per cent of a core). At every
window edge the harness reads every side's counters back to back: the whole process's CPU in
nanoseconds (its CPU-time clock, ``benchmarks._cpu``: every thread, exited ones included),
each thread's (``schedstat``), then memory (``memory_full_info``: RSS, USS, PSS). So each
window gives one value per side and one ratio per pair, with no drift between the sides; the
rounds are the windows, reported as min / median / max, beside the ratio over the whole
measured span (total CPU / total CPU), which holds any burst.

By default the span is the steady state (:func:`add_span_args`): it starts after the live
analysis' window has filled and lasts one whole full-pass period, so it holds one pass of
every rule. ``--quick`` measures the first minutes only and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from benchmarks._cpu import cpu_clock, process_cpu_ns, thread_cpu_ns  # noqa: E402

ESCAPES = re.compile(rb"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>])")
TREE_SCRIPT = """
import os, sys, time
n = int(sys.argv[1])
for _ in range(n - 1):
    if os.fork() == 0:
        time.sleep(3600)
        os._exit(0)
print("ready", flush=True)
time.sleep(3600)
"""


@contextlib.contextmanager
def process_tree(size: int = 32) -> Iterator[int]:
    """A real tree of ``size`` sleeping processes (root + children); yields the root pid."""
    root = subprocess.Popen(
        [sys.executable, "-c", TREE_SCRIPT, str(size)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert root.stdout is not None
    if root.stdout.readline().strip() != "ready":
        raise RuntimeError("the benchmark's process tree did not start")
    try:
        yield root.pid
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()


def agent_argv(*args: str) -> list[str]:
    """The real agent, as a user starts it: ``accelwatch ARGS`` (from this checkout)."""
    return [sys.executable, "-m", "agent", *args]


def baseline_argv(*args: str) -> list[str]:
    """A baseline of ``benchmarks/_baselines.py``, in its own process."""
    return [sys.executable, "-m", "benchmarks._baselines", *args]


@dataclass
class Side:
    """One side of a comparison: a command, and a line saying what its process does."""

    name: str
    argv: list[str]
    includes: str
    #: (columns, rows) to run it in a pseudo-terminal of that size; None: no terminal.
    terminal: tuple[int, int] | None = None
    #: Extra environment variables of the child.
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Slot:
    """One side over one window."""

    cpu_share: float  # CPU seconds per wall second (1.0 = one core)
    rss_mb: float
    uss_mb: float
    #: The same share per thread name (``thread_cpu``); threads that ended are in no entry.
    threads: dict[str, float] = field(default_factory=dict)
    #: Proportional set size: shared pages (libraries' code, the page cache's copies of the
    #: DuckDB library) split between the processes that map them.
    pss_mb: float = 0.0
    #: CPU seconds (ns resolution) and wall seconds of the window.
    cpu_s: float = 0.0
    wall_s: float = 0.0
    #: psutil's user + system over the same window (clock ticks): the cross-check.
    ticks_cpu_s: float = 0.0


class Measurable:
    """What every started side offers: its terminal output, keys' answers, CPU and memory.

    ``pid`` and ``proc`` are set by the subclass once the program runs."""

    pid: int
    proc: psutil.Process

    def __init__(self, side: Side) -> None:
        self.side = side
        #: When it was started (``time.monotonic_ns``): the measured span in minutes after it.
        self.started_ns = time.monotonic_ns()
        self.output = bytearray()
        #: Bytes read from the terminal so far (``output`` keeps only the last 64 KiB).
        self.received = 0
        #: The first 256 KiB the program wrote (its first full screens).
        self.head = bytearray()

    def _take(self, data: bytes) -> None:
        """What the program just wrote to its terminal."""
        if len(self.head) < 262144:
            self.head += data
        self.output += data
        self.received += len(data)
        del self.output[:-65536]

    def wait_for(self, marker: bytes, since: int, timeout: float = 3.0) -> float | None:
        """When ``marker`` shows on the terminal in output after byte ``since`` (escape codes
        ignored), polled every 2 ms; None if it does not within ``timeout``."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            new = bytes(self.output[-(self.received - since) :]) if self.received > since else b""
            if marker in ESCAPES.sub(b"", new):
                return time.perf_counter()
            time.sleep(0.002)
        return None

    def alive(self) -> bool:
        try:
            return self.proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def edge(self) -> Edge:
        """This side's counters now (CPU first: they are what the windows compare)."""
        if not hasattr(self, "_clock"):
            self._clock = cpu_clock(self.pid)
        wall, cpu = time.monotonic_ns(), process_cpu_ns(self._clock)
        threads = thread_cpu_ns(self.pid)
        times = self.proc.cpu_times()
        return Edge(wall, cpu, threads, times.user + times.system)


@dataclass
class Edge:
    """A side's counters at one window edge."""

    wall_ns: int
    cpu_ns: int
    threads: dict[str, int]
    ticks_cpu_s: float


def window_slot(before: Edge, after: Edge, mem: Any) -> Slot:
    """One side's window between two of its edges (threads that started or ended inside it
    are counted from or to then; the whole-process figure counts them all)."""
    wall = (after.wall_ns - before.wall_ns) / 1e9
    cpu = (after.cpu_ns - before.cpu_ns) / 1e9
    threads = {k: (v - before.threads.get(k, 0)) / 1e9 / wall for k, v in after.threads.items()}
    return Slot(
        cpu / wall, mem.rss / 1e6, mem.uss / 1e6, threads, mem.pss / 1e6,
        cpu_s=cpu, wall_s=wall, ticks_cpu_s=after.ticks_cpu_s - before.ticks_cpu_s,
    )  # fmt: skip


class Child(Measurable):
    """A started side; :meth:`stop` ends it (SIGINT first, so the agent finalizes its run)."""

    def __init__(self, side: Side) -> None:
        super().__init__(side)
        self._fd: int | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child; not a pipe: a full pipe would stall it
        if side.terminal is None:
            self._popen = subprocess.Popen(
                side.argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._log,
                env={**os.environ, **side.env},
                start_new_session=True,
            )
            self.pid = self._popen.pid
        else:
            self._popen = None
            cols, rows = side.terminal
            pid, fd = pty.fork()
            if pid == 0:  # the child: size the terminal before the program reads it
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.environ.update({"TERM": "xterm-256color", **side.env})
                os.chdir(ROOT)
                try:
                    os.execv(side.argv[0], side.argv)
                finally:  # never run the benchmark's own code in the forked child
                    os._exit(127)
            self.pid, self._fd = pid, fd
            threading.Thread(target=self._drain, daemon=True).start()
        self.proc = psutil.Process(self.pid)

    def _drain(self) -> None:
        """Read the terminal like a terminal emulator would (keeps the last 64 KiB)."""
        assert self._fd is not None
        while True:
            ready, _, _ = select.select([self._fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 65536)
            except OSError:
                return
            if not data:
                return
            self._take(data)

    def type_keys(self, keys: bytes) -> None:
        assert self._fd is not None, "only a side in a terminal reads keys"
        os.write(self._fd, keys)

    def stop(self) -> str:
        """End the child; what it wrote on stderr (or its terminal), for a failure message."""
        if self._fd is not None:  # a terminal program: quit the way a user does
            with contextlib.suppress(OSError):
                self.type_keys(b"q")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self._reap() is None:
                time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self._reap() is None:
            time.sleep(0.1)
        if self._reap() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._wait()
        if self._popen is not None:
            self._log.seek(0)
            return self._log.read().decode(errors="replace")
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        return self.output.decode(errors="replace")

    def _reap(self) -> int | None:
        if self._popen is not None:
            return self._popen.poll()
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        return None if pid == 0 else status

    def _wait(self) -> None:
        if self._popen is not None:
            self._popen.wait()
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)


@dataclass
class Measured:
    """One side over every window of the span."""

    side: Side
    slots: list[Slot] = field(default_factory=list)
    #: The span, in minutes after this side's start.
    start_min: float = 0.0
    end_min: float = 0.0

    @property
    def cpu(self) -> list[float]:
        """Its CPU share in each window."""
        return [s.cpu_share for s in self.slots]

    @property
    def span_cpu(self) -> float:
        """Its CPU share over the whole span (total CPU / total wall: bursts included)."""
        wall = sum(s.wall_s for s in self.slots)
        return sum(s.cpu_s for s in self.slots) / wall if wall > 0 else 0.0


def interleaved(
    sides: Sequence[Side],
    *,
    rounds: int,
    window: float,
    warmup: float,
    then: Callable[[dict[str, Child]], None] | None = None,
    start: Callable[[Side], Child] = Child,
) -> dict[str, Measured]:
    """Start every side (with ``start``: a pty or pipes by default), let them warm up, then
    measure all of them over the same ``rounds`` consecutive windows of ``window`` seconds:
    at each edge every side's counters are read back to back, CPU of all sides first (the
    order rotates each edge, so no side is always read first), memory after. ``then`` runs
    on the live children after the last window, before they stop.

    (The name is the harness's older one: the sides were once measured one after another.)"""
    children: list[Child] = []
    results = {side.name: Measured(side) for side in sides}
    try:
        for side in sides:
            children.append(start(side))
        time.sleep(warmup)
        edges = _edges(children, 0)
        began = time.monotonic()
        for n in range(1, rounds + 1):
            time.sleep(max(0.0, began + n * window - time.monotonic()))  # no drift over the span
            after = _edges(children, n)
            for child in children:
                try:
                    mem = child.proc.memory_full_info()
                except psutil.Error as exc:
                    raise BenchmarkError(
                        f"{child.side.name} vanished ({exc}):\n{child.stop()[-3000:]}"
                    ) from None
                name = child.side.name
                results[name].slots.append(window_slot(edges[name], after[name], mem))
            edges = after
        for child in children:
            m = results[child.side.name]
            m.end_min = (edges[child.side.name].wall_ns - child.started_ns) / 60e9
            m.start_min = m.end_min - sum(s.wall_s for s in m.slots) / 60
        if then is not None:
            then({child.side.name: child for child in children})
    finally:
        for child in children:
            child.stop()
    return results


def _edges(children: Sequence[Child], n: int) -> dict[str, Edge]:
    """Every side's counters, back to back, starting with side ``n`` (mod the number)."""
    out = {}
    for child in children[n % len(children) :] + children[: n % len(children)]:
        if not child.alive():
            raise BenchmarkError(f"{child.side.name} exited early:\n{child.stop()[-3000:]}")
        try:
            out[child.side.name] = child.edge()
        except (psutil.Error, OSError) as exc:
            raise BenchmarkError(
                f"{child.side.name} vanished ({exc}):\n{child.stop()[-3000:]}"
            ) from None
    return out


class BenchmarkError(RuntimeError):
    """A side could not be measured: the benchmark reports it and exits 1."""


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``min / median / max`` of the rounds."""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def report_threads(report: Report, measured: Measured) -> None:
    """One info row per thread name of a side: its CPU share over the same windows (threads
    that started or ended inside a window are counted from or to then)."""
    names = sorted({n for s in measured.slots for n in s.threads})
    for name in names:
        shares = [s.threads.get(name, 0.0) * 100 for s in measured.slots]
        report.info(f"{measured.side.name} thread {name}, % of one core", spread(shares))


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """A / B of each round."""
    return [x / y if y > 0 else float("inf") for x, y in zip(a, b)]


class Report:
    """Rows of one benchmark; a target row prints PASS or MISS, and a MISS makes the exit code 1."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.includes: list[tuple[str, str]] = []
        self.rows: list[tuple[str, str, str, str]] = []
        self.missed: list[str] = []
        #: Lines printed under the title (what the measured span covers).
        self.notes: list[str] = []

    def note(self, line: str) -> None:
        self.notes.append(line)

    def side(self, name: str, includes: str) -> None:
        self.includes.append((name, includes))

    def info(self, measure: str, value: str) -> None:
        self.rows.append((measure, value, "", ""))

    def target(self, measure: str, value: str, target: str, ok: bool) -> None:
        self.rows.append((measure, value, target, "PASS" if ok else "MISS"))
        if not ok:
            self.missed.append(measure)

    def print(self) -> int:
        print(f"\n{self.title}")
        for line in self.notes:
            print(line)
        if self.includes:
            print("what each side includes:")
            for name, text in self.includes:
                print(f"  {name:12} {text}")
        width = max([52, *(len(r[0]) for r in self.rows)])
        print(f"  {'measure':{width}} {'min / median / max':>24} {'target':>10}  result")
        for measure, value, target, result in self.rows:
            print(f"  {measure:{width}} {value:>24} {target:>10}  {result}")
        if self.missed:
            print(f"MISS: {len(self.missed)} target(s) missed: " + "; ".join(self.missed))
        else:
            print("PASS: every target met")
        return 1 if self.missed else 0


def add_round_args(
    parser: argparse.ArgumentParser, *, rounds: int, window: float, warmup: float
) -> None:
    """``--rounds/--window/--warmup`` and ``--quick`` (3 short rounds, ~30 s)."""
    parser.add_argument("--rounds", type=int, default=rounds, help=f"rounds (default {rounds})")
    parser.add_argument(
        "--window", type=float, default=window, help=f"seconds per side and round ({window:g})"
    )
    parser.add_argument(
        "--warmup", type=float, default=warmup, help=f"seconds before measuring ({warmup:g})"
    )
    parser.add_argument("--quick", action="store_true", help="3 short rounds (about 30 s)")


def apply_quick(args: argparse.Namespace, *, window: float, warmup: float) -> None:
    if args.quick:
        args.rounds, args.window, args.warmup = 3, window, warmup
    if args.rounds < 3:
        raise SystemExit("benchmarks need at least 3 rounds (min / median / max)")


def fail(error: Exception) -> int:
    """A benchmark that cannot measure says why in one line and exits 1; it never hangs."""
    print(f"benchmark failed: {error}", file=sys.stderr)
    return 1
