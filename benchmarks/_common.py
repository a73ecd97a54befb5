"""Shared harness of the benchmarks: child processes measured whole, interleaved, with verdicts.

Every side of a comparison (the agent, a bare loop, nvitop) is its own child process. Its CPU
is ``psutil.Process(pid).cpu_times()`` (user + system of all its threads) over a fixed wall
window, its memory ``memory_full_info()`` (RSS and USS) at the end of the window. All sides run
at once for the whole benchmark (each uses a few per cent of a core) and are measured in turns,
A, B, C, A, B, C ..., so the load of the rest of the machine spreads over every side; a ratio
is computed per round and reported as min / median / max over the rounds.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

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
    cpu_share: float  # CPU seconds per wall second (1.0 = one core)
    rss_mb: float
    uss_mb: float
    #: The same share per thread name (``thread_cpu``); threads that ended are in no entry.
    threads: dict[str, float] = field(default_factory=dict)
    #: Proportional set size: shared pages (libraries' code, the page cache's copies of the
    #: DuckDB library) split between the processes that map them.
    pss_mb: float = 0.0


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of ``pid``, summed by kernel thread name:
    the agent names its threads (``aw-sampler``, ``aw-store`` ...); its main thread is
    ``main``; unnamed ones (DuckDB's, OpenBLAS's, a baseline's) are ``other``."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode(errors="replace")
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(tid) == pid:
            name = "main"
        elif not name.startswith("aw-"):
            name = "other"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * _TICK_S
    return out


class Measurable:
    """What every started side offers: its terminal output, keys' answers, CPU and memory.

    ``pid`` and ``proc`` are set by the subclass once the program runs."""

    pid: int
    proc: psutil.Process

    def __init__(self, side: Side) -> None:
        self.side = side
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

    def cpu_seconds(self) -> float:
        times = self.proc.cpu_times()
        return times.user + times.system

    def slot(self, window: float) -> Slot:
        """Measure this side alone for ``window`` wall seconds (the whole process, all its
        threads; each thread's share beside)."""
        wall, cpu, threads = time.monotonic(), self.cpu_seconds(), thread_cpu(self.pid)
        time.sleep(window)
        used, elapsed = self.cpu_seconds() - cpu, time.monotonic() - wall
        after = thread_cpu(self.pid)
        mem = self.proc.memory_full_info()
        shares = {k: (v - threads.get(k, 0.0)) / elapsed for k, v in after.items()}
        return Slot(used / elapsed, mem.rss / 1e6, mem.uss / 1e6, shares, mem.pss / 1e6)


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
    side: Side
    slots: list[Slot] = field(default_factory=list)

    @property
    def cpu(self) -> list[float]:
        return [s.cpu_share for s in self.slots]


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
    measure them in turns, each round starting one side later, for ``rounds`` rounds; ``then`` runs on the live children after the
    last round, before they stop."""
    children: list[Child] = []
    results = {side.name: Measured(side) for side in sides}
    try:
        for side in sides:
            children.append(start(side))
        time.sleep(warmup)
        for n in range(rounds):
            # Each round starts one side later (A B C, B C A, C A B, ...): with a fixed order
            # any trend over the run (a side still warming up, the machine's load changing)
            # would fall on the same side every round.
            for child in children[n % len(children) :] + children[: n % len(children)]:
                if not child.alive():
                    raise BenchmarkError(f"{child.side.name} exited early:\n{child.stop()[-3000:]}")
                try:
                    results[child.side.name].slots.append(child.slot(window))
                except psutil.Error as exc:
                    raise BenchmarkError(
                        f"{child.side.name} vanished ({exc}):\n{child.stop()[-3000:]}"
                    ) from None
        if then is not None:
            then({child.side.name: child for child in children})
    finally:
        for child in children:
            child.stop()
    return results


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


def judge_live_cpu(
    report: Report, on: Sequence[float], off: Sequence[float], target: float
) -> None:
    """The live analysis' cost: the whole agent with it on minus the same agent with it off,
    per interleaved round, in points of one core; the median must stay within ``target``."""
    report.info("live: CPU, % of one core", spread([c * 100 for c in on]))
    report.info("no-live: CPU, % of one core", spread([c * 100 for c in off]))
    extra = [(a - b) * 100 for a, b in zip(on, off)]
    report.target(
        "live analysis: live - no-live, % of one core (per round)", spread(extra, "{:+.2f}"),
        f"<= {target:.1%}", statistics.median(extra) <= target * 100,
    )  # fmt: skip


class Report:
    """Rows of one benchmark; a target row prints PASS or MISS, and a MISS makes the exit code 1."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.includes: list[tuple[str, str]] = []
        self.rows: list[tuple[str, str, str, str]] = []
        self.missed: list[str] = []

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
