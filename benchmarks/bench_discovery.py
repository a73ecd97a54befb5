"""The agent's cost does not depend on the host's other processes (issue 14: "discovery cost
independent of the host's other processes").

One whole headless agent (``accelwatch attach ROOT --headless``, no GPUs: process, host, disk,
fabric, storage and steps sources, store writer, live analysis, headless line; all threads,
CPU from the process's CPU-time clock in ns) watches a real 32-process tree. Its windows
alternate between a quiet host and a crowded one: ``--others`` sleeping processes that are not
in the watched tree, started before the window and killed after it (neither their start nor
their end is inside a window). Each crowded window is compared with the mean of the quiet
windows either side of it (the same agent, minutes apart: drift cancels). Before December 2026
discovery re-read ``/proc`` for every process on the host each tick (25 ms a tick with 1,100
host processes); walking only the job's tree, the ratio is about 1.

Target: crowded / quiet <= 1.15x over all windows together (the median pair is printed too).
Exits 1 on a MISS.

    python benchmarks/bench_discovery.py [--rounds 5] [--window 30] [--warmup 30] [--others 1500] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from benchmarks._common import (  # noqa: E402
    Child,
    Side,
    add_round_args,
    agent_argv,
    apply_quick,
    fail,
    process_tree,
    spread,
)
from benchmarks._common import Report as _Report  # noqa: E402
from benchmarks._cpu import cpu_clock, process_cpu_ns  # noqa: E402

TARGET = 1.15
SETTLE_S = 3.0  # after the crowd starts or ends, before a window opens


def _window(clock: int, seconds: float) -> float:
    """Share of one core the agent used over the next ``seconds``."""
    t0, c0 = time.monotonic(), process_cpu_ns(clock)
    time.sleep(seconds)
    return (process_cpu_ns(clock) - c0) / 1e9 / (time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_round_args(parser, rounds=5, window=30.0, warmup=30.0)
    parser.add_argument("--others", type=int, default=1500, help="host processes to add")
    args = parser.parse_args(argv)
    apply_quick(args, window=10.0, warmup=15.0)
    report = _Report(
        f"a real 32-process tree, no GPUs, 1 s interval; {args.rounds} crowded windows of "
        f"{args.window:g} s between {args.rounds + 1} quiet ones"
    )
    includes = (
        "the whole headless agent process (all threads): process, host, disk, fabric, "
        "storage, steps sources, store writer, live analysis, headless line"
    )
    if args.quick:
        report.note("FIRST MINUTES ONLY: short windows soon after start (the ratio still judges)")
    report.side("agent", includes)
    report.side(
        "crowd", f"{args.others} sleeping processes outside the watched tree, present only "
        "in the crowded windows"
    )  # fmt: skip
    quiet: list[float] = []
    crowded: list[float] = []
    hosts: dict[str, list[int]] = {"quiet": [], "crowded": []}
    try:
        with tempfile.TemporaryDirectory() as tmp, process_tree(32) as root:
            argv = agent_argv("attach", str(root), "--headless", "--db", f"{tmp}/a.duckdb")
            agent = Child(Side("agent", argv, includes))
            try:
                time.sleep(args.warmup)
                clock = cpu_clock(agent.pid)
                for i in range(args.rounds + 1):
                    hosts["quiet"].append(len(psutil.pids()))
                    quiet.append(_window(clock, args.window))
                    if i == args.rounds:
                        break
                    with process_tree(args.others):
                        time.sleep(SETTLE_S)
                        hosts["crowded"].append(len(psutil.pids()))
                        crowded.append(_window(clock, args.window))
                    time.sleep(SETTLE_S)
                if not agent.proc.is_running() or agent.proc.status() == psutil.STATUS_ZOMBIE:
                    raise RuntimeError("the agent exited during the rounds")
            finally:
                agent.stop()
    except Exception as exc:  # one line and exit 1, never a traceback mid-table
        return fail(exc)
    pairs = [c / ((quiet[i] + quiet[i + 1]) / 2) for i, c in enumerate(crowded)]
    whole = sum(crowded) / (sum(quiet[:-1]) / 2 + sum(quiet[1:]) / 2)
    report.info("host processes, quiet", spread(hosts["quiet"], "{:.0f}"))
    report.info("host processes, crowded", spread(hosts["crowded"], "{:.0f}"))
    report.info("agent % of a core, quiet", spread([100 * q for q in quiet], "{:.3f}"))
    report.info("agent % of a core, crowded", spread([100 * c for c in crowded], "{:.3f}"))
    report.info("crowded / quiet neighbours, per window", spread(pairs))
    report.target(
        "crowded / quiet, all windows", f"{whole:.2f} (median {statistics.median(pairs):.2f})",
        f"<={TARGET}x", whole <= TARGET,
    )  # fmt: skip
    return report.print()


if __name__ == "__main__":
    sys.exit(main())
