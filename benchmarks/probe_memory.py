"""Where the headless agent's resident pages are: ``/proc/PID/smaps`` of the whole agent
process, grouped by what maps them, at chosen times after start.

The agent is ``accelwatch attach ROOT --headless --simulate SCENARIO --db TMP`` on a real
32-process sleeping tree at 1 Hz (bench_nvml's agent side), run from one or more checkouts
(``--checkout DIR``, default this one) interleaved, one agent at a time: an A/B of two
branches runs the same setup in turn, ``--rounds`` times. For each sample time it prints RSS,
USS and PSS of the process, and RSS split into file-backed (by library) and anonymous memory
(the heap and anonymous mappings, thread stacks apart). Information, not a target: the targets
are bench_nvml's and bench_tui's. Each checkout's ``agent`` package is imported from its
directory (the child's working directory) with this interpreter's installed dependencies.

    python benchmarks/probe_memory.py [--at 40 360] [--rounds 2] [--checkout DIR ...]
                                      [--scenario healthy]

A side that cannot be measured (the agent exits early) prints one ``benchmark failed: ...``
line and exits 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import fail, process_tree  # noqa: E402

#: Libraries shown on their own line; every other file mapping is summed as "other files".
NAMED = ("_duckdb", "libpython", "numpy", "openblas", "libstdc++", "libc.so", "libm.so")


def smaps_groups(pid: int) -> dict[str, float]:
    """RSS in MB by group, plus rss/uss/pss/anon totals, from ``/proc/PID/smaps``."""
    groups: dict[str, float] = defaultdict(float)
    path = ""
    size_kb = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                path = " ".join(parts[5:]) if len(parts) > 5 else ""
                start, end = (int(x, 16) for x in parts[0].split("-"))
                size_kb = (end - start) // 1024
                continue
            if len(parts) < 2 or not parts[1].isdigit():
                continue  # VmFlags
            key, value = parts[0][:-1], int(parts[1]) / 1024
            if key == "Rss":
                groups["rss"] += value
                groups[_group(path, size_kb)] += value
            elif key == "Pss":
                groups["pss"] += value
            elif key in ("Private_Clean", "Private_Dirty"):
                groups["uss"] += value
            elif key == "Anonymous":
                groups["anon"] += value
    return groups


def _group(path: str, size_kb: int) -> str:
    if not path:
        # glibc thread stacks are 8 MB + a guard page; arenas are 64 MB reservations
        return "anon: 8 MB mappings (thread stacks)" if size_kb == 8192 else "anon: mappings"
    if path.startswith("["):
        return "anon: " + path
    for name in NAMED:
        if name in os.path.basename(path):
            return "file: " + name
    return "file: other"


def run_agent(checkout: Path, root: int, scenario: str, at: list[float]) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="aw-probe-") as tmp:
        argv = [sys.executable, "-m", "agent", "attach", str(root), "--simulate", scenario]
        argv += ["--db", str(Path(tmp) / "probe.duckdb"), "--headless"]
        child = subprocess.Popen(
            argv,
            cwd=checkout,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        start = time.monotonic()
        samples = []
        try:
            for t in at:
                time.sleep(max(0.0, start + t - time.monotonic()))
                if child.poll() is not None:
                    raise RuntimeError(f"the agent from {checkout} exited ({child.returncode})")
                samples.append(smaps_groups(child.pid))
        finally:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--at", type=float, nargs="+", default=[40.0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkout", type=Path, action="append")
    parser.add_argument("--scenario", default="healthy")
    args = parser.parse_args()
    checkouts = args.checkout or [Path(__file__).resolve().parents[1]]
    results: dict[tuple[str, float], list[dict]] = defaultdict(list)
    try:
        measure(args, checkouts, results)
    except (RuntimeError, OSError) as exc:
        return fail(exc)
    print_results(args, results)
    return 0


def measure(args: argparse.Namespace, checkouts: list[Path], results: dict) -> None:
    with process_tree(32) as root:
        for _ in range(args.rounds):
            for checkout in checkouts:
                for t, sample in zip(args.at, run_agent(checkout, root, args.scenario, args.at)):
                    results[(str(checkout), t)].append(sample)


def print_results(args: argparse.Namespace, results: dict) -> None:
    print(f"load average {os.getloadavg()[0]:.1f}; MB, median of {args.rounds} rounds")
    for (checkout, t), samples in results.items():
        print(f"\n{checkout} at {t:g} s")
        keys = sorted(
            {k for s in samples for k in s},
            key=lambda k: (k not in ("rss", "uss", "pss", "anon"), k),
        )
        for key in keys:
            values = [s.get(key, 0.0) for s in samples]
            print(
                f"  {key:40s} {statistics.median(values):7.1f}  ({min(values):.1f}-{max(values):.1f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
