"""The whole headless agent against a bare loop of the same reads and against nvitop's monitor.

Eight simulated H100s (scenario ``healthy``: GPM, 18 NVLinks each) and a real tree of 32
sleeping processes, sampled at 1 Hz by three processes running at once, each measured whole over the same windows
(``benchmarks._common``: the process's CPU-time clock in ns, all threads, exited ones too; RSS,
USS, PSS), by default in the steady state (``benchmarks._span``: after the live analysis'
window has filled, over one whole full-pass period):

* agent: ``accelwatch attach ROOT --headless --simulate healthy --db TMP``: every thread of
  the agent (sampler, collectors, store writer, live analysis, headless line);
* bare: ``benchmarks._baselines bare``: the NVML collector's nvidia-ml-py calls, the process
  collector's discovery (children files) and psutil's reads of the same fields of the same
  tree, the host and disk collectors' psutil reads, and the fabric and storage sources'
  syscalls (interfaces, the job's mounts and their block devices), in one loop;
* nvitop: ``benchmarks._baselines nvitop-monitor``: nvitop's own ``ResourceMetricCollector``
  on the same root (its daemon calls ``take_snapshots()`` each interval).

Every side installs the same simulated driver (``collectors.sim.install``), so its cost is on
both sides of each ratio. Before the rounds, ``benchmarks._baselines calls`` runs the three
sides' NVML work in one process on one driver and prints, per side, the driver calls a tick
(counted per C symbol at the simulated driver) and the CPU of a tick: the agent's
``NvmlCollector.collect``, the bare loop's NVML part, nvitop's ``take_snapshots`` (its whole
interval, host and tree reads included). The bare loop must make exactly the agent's calls,
symbol by symbol (a target: otherwise agent / bare compares different work). Targets (issue
14), CPU over the whole span: agent / bare <= 1.25x, agent / nvitop <= 0.6x; agent RSS <= 80 MB
(the largest of the windows). Also printed: the agent's CPU per thread (the kernel names it gives its
threads, ``aw-sampler``, ``aw-store`` ...; ``other`` is DuckDB's own). Exits 1 on a MISS.

    python benchmarks/bench_nvml.py [--rounds 11] [--window 60] [--warmup 630] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    Report,
    Side,
    agent_argv,
    baseline_argv,
    fail,
    interleaved,
    process_tree,
    ratios,
    report_threads,
    spread,
)
from benchmarks._span import (  # noqa: E402
    add_span_args,
    apply_span,
    burst_row,
    cpu_row,
    judge_ratio,
    judge_resolution,
    note_span,
    report_sides,
)

TREE_SIZE = 32
SCENARIO = "healthy"
TARGET_BARE = 1.25
TARGET_NVITOP = 0.6
TARGET_RSS_MB = 80.0


def sides(root: int, db: Path, interval: float) -> list[Side]:
    every = f"{interval:g}"
    return [
        Side(
            "agent",
            agent_argv(
                "attach",
                str(root),
                "--headless",
                "--simulate",
                SCENARIO,
                "--db",
                str(db),
                "--interval",
                every,
            ),  # fmt: skip
            "the whole headless agent process (all threads): NVML (+ XID event thread), process, "
            "host, disk, fabric, storage, steps sources, store writer, live analysis, read "
            "server, headless line",
        ),
        Side(
            "bare",
            baseline_argv("bare", "--pid", str(root), "--scenario", SCENARIO, "--interval", every),
            "one loop: the same nvidia-ml-py calls + the same tree discovery and psutil reads "
            "of the same fields + host/disk reads + the fabric/storage sources' syscalls",
        ),
        Side(
            "nvitop",
            baseline_argv(
                "nvitop-monitor", "--pid", str(root), "--scenario", SCENARIO, "--interval", every
            ),
            "nvitop's ResourceMetricCollector on the same root and devices (its daemon loop)",
        ),
    ]


def nvml_work(root: int, interval: float) -> dict:
    """The sides' NVML work in one process (``_baselines calls``): ms and calls per tick."""
    argv = baseline_argv("calls", "--pid", str(root), "--scenario", SCENARIO)
    argv += ["--interval", f"{interval:g}", "--rounds", "5"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"_baselines calls exited {done.returncode}: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report_nvml_work(report: Report, work: dict) -> None:
    calls, ms = work["calls"], work["ms"]
    report.info(
        "NVML driver calls a tick: agent / bare / nvitop",
        " / ".join(f"{sum(calls[s].values()):.1f}" for s in ("agent", "bare", "nvitop")),
    )
    what = {
        "agent": "agent: NvmlCollector.collect in-process, ms CPU",
        "bare": "bare: its NVML calls in-process, ms CPU",
        "nvitop": "nvitop: take_snapshots in-process (its host + tree reads too), ms CPU",
    }
    for side, label in what.items():
        report.info(label, spread(ms[side], "{:.2f}"))
    report.info(
        "agent collect / nvitop take_snapshots in-process (not like for like: info)",
        spread(ratios(ms["agent"], ms["nvitop"])),
    )
    differ = sorted(k for k in {*calls["agent"], *calls["bare"]} if
                    calls["agent"].get(k) != calls["bare"].get(k))  # fmt: skip
    report.target(
        "bare makes the agent's driver calls (per symbol)",
        "same" if not differ else f"differ: {', '.join(differ[:3])}",
        "same",
        not differ,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_span_args(parser)
    parser.add_argument("--interval", type=float, default=1.0, help="sampling interval (s)")
    args = parser.parse_args(argv)
    span = apply_span(args)
    with tempfile.TemporaryDirectory() as tmp, process_tree(TREE_SIZE) as root:
        all_sides = sides(root, Path(tmp) / "agent.duckdb", args.interval)
        try:
            work = nvml_work(root, args.interval)
            got = interleaved(all_sides, rounds=args.rounds, window=args.window, warmup=args.warmup)
        except Exception as exc:  # one line and exit 1, never a traceback mid-table
            return fail(exc)
    agent, bare, nvitop = got["agent"], got["bare"], got["nvitop"]
    report = Report(
        f"8 simulated H100s ({SCENARIO}), {TREE_SIZE}-process tree, {args.interval:g} s interval, "
        f"{args.rounds} windows of {args.window:g} s, every side in each"
    )
    note_span(report, span)
    report_sides(report, all_sides, got)
    for m in (agent, bare, nvitop):
        cpu_row(report, m)
    burst_row(report, agent)
    report_threads(report, agent)
    report_nvml_work(report, work)
    judge_resolution(report, got)
    judge_ratio(report, "agent / bare loop", agent, bare, TARGET_BARE)
    judge_ratio(report, "agent / nvitop monitor", agent, nvitop, TARGET_NVITOP)
    rss = [s.rss_mb for s in agent.slots]
    report.target(
        "agent RSS (MB)",
        spread(rss, "{:.0f}"),
        f"<= {TARGET_RSS_MB:.0f}",
        max(rss) <= TARGET_RSS_MB,
    )
    report.info("agent USS (MB)", spread([s.uss_mb for s in agent.slots], "{:.0f}"))
    report.info("agent PSS (MB)", spread([s.pss_mb for s in agent.slots], "{:.0f}"))
    for m in (bare, nvitop):
        report.info(f"{m.side.name} RSS (MB)", spread([s.rss_mb for s in m.slots], "{:.0f}"))
    return report.print()


if __name__ == "__main__":
    sys.exit(main())
