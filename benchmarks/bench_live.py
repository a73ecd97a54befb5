"""Live analysis: how soon each rule's first finding comes, and what the analysis costs the agent.

Prints, in one run:
  1. first live finding per rule, seconds after the condition's onset, against the rule's
     minimum duration + 10 s (issue 14). Every scenario (GPU, TPU, fabric and storage), host
     variant and the multi-rank job of the latency tests, recorded in simulated time through
     the real Sampler, simulated NVML / TPU collectors (fabric / storage: the real collectors
     over the scenario's simulated sysfs/procfs trees), a real DuckDB file and the real
     LiveAnalysis polled after every tick; the onset
     is where the post-run analysis of the same file starts the finding's episode. Each round
     starts the analysis one tick later (the phase of its clocks against the onset), so the
     rounds differ: min / median / max over the rounds per rule.
  2. live analysis CPU, % of one core: two whole agents (the public ``Session``, headless)
     record the ``throttled-thermal`` scenario (8 simulated H100s, two throttled) and a real
     32-process tree at 1 Hz at once, one with live analysis and one without, measured whole
     over the same windows (the process's CPU-time clock in ns, all threads), by default in the
     steady state (``--cpu-warmup``/``--cpu-rounds``/``--cpu-window``: after the live window has
     filled, over one whole full-pass period); target: live - no-live <= 0.3% of one core over
     the whole span. Also printed: the analysis thread's own CPU over the whole run (its
     ``analysis.cpu_s`` health counter / seconds recorded).

Exits 1 on a MISS.

    python benchmarks/bench_live.py [--rounds 3] [--quick] [--no-cpu] [--no-latency]
                                    [--cpu-rounds 11] [--cpu-window 60] [--cpu-warmup 630]

``--quick``: one scenario per rule for the latency part, the first minutes only for the CPU part.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.analysis.thresholds import LIVE_CPU_TARGET  # noqa: E402
from benchmarks._common import (  # noqa: E402
    Report,
    Side,
    baseline_argv,
    fail,
    interleaved,
    process_tree,
    spread,
)
from benchmarks._span import (  # noqa: E402
    Span,
    add_span_args,
    apply_span,
    judge_live_cpu,
    judge_resolution,
    note_span,
    report_sides,
)

CPU_SCENARIO = "throttled-thermal"
#: ``--quick``: one case per rule (the full run records every case).
QUICK_CASES = (
    "hang", "xid-error", "gpu-lost", "input-bound", "idle-reserved", "dataloader", "io-wait",
    "launch-pinned", "pcie-bound", "comm-bound", "fp32-training", "memory-bound",
    "throttled-thermal", "memory-pressure", "memory-leak", "swap", "straggler",
    "checkpoint-writes", "checkpoint-stall", "tpu-v5e-8-input-bound", "ib-port-degrading",
    "roce-congestion", "nfs-latency-starving", "checkpoint-lustre", "rank-spread",
)  # fmt: skip


def bench_latency(report: Report, tmp: Path, rounds: int, only: list[str] | None) -> None:
    from tests.analysis.live_runs import cases, live_run_delayed

    by_rule: dict[str, list[float | None]] = defaultdict(list)
    targets: dict[str, float] = {}
    started = time.perf_counter()
    for name, spec in sorted(cases().items()):
        if only and name not in only:
            continue
        for r in range(rounds):
            run = live_run_delayed(tmp / f"{name}-{r}.duckdb", spec, delay_ticks=r)
            for x in run.latencies:
                by_rule[f"{x.rule} ({name})"].append(x.latency_s)
                targets[f"{x.rule} ({name})"] = x.target_s
    report.side(
        "latency",
        "simulated time: real Sampler, simulated NVML/TPU collectors, real fabric/storage "
        "collectors over simulated trees, DuckDB file, LiveAnalysis polled every tick; "
        "onset = the post-run finding's episode start",
    )
    for key in sorted(by_rule):
        values = by_rule[key]
        target = targets[key]
        if any(v is None for v in values):
            report.target(f"first live {key}, s after onset", "never", f"<= {target:.0f}", False)
            continue
        got = [float(v) for v in values if v is not None]
        report.target(
            f"first live {key}, s after onset", spread(got, "{:.0f}"), f"<= {target:.0f}",
            max(got) <= target,
        )  # fmt: skip
    if not only:  # every case ran: a rule that can show live and was measured nowhere misses
        from agent.analysis.rules import ALL_RULES
        from agent.analysis.rules.straggler_watch import never_live

        measured = {key.split(" (", 1)[0] for key in by_rule}
        unmeasured = sorted(r.id for r in ALL_RULES if r.may_find is not never_live
                            and r.id not in measured)  # fmt: skip
        report.target(
            "live rules with no case here (the post-run analysis never found them)",
            ", ".join(unmeasured) or "none", "none", not unmeasured,
        )  # fmt: skip
    report.info("latency part: wall seconds", f"{time.perf_counter() - started:.0f}")


def bench_cpu(report: Report, tmp: Path, span: Span) -> None:
    health = tmp / "health.json"
    with process_tree(32) as root:

        def session(live: str) -> list[str]:
            extra = ["--health-out", str(health)] if live == "on" else []
            return baseline_argv(
                "session", "--pid", str(root), "--scenario", CPU_SCENARIO,
                "--db", str(tmp / f"cpu-{live}.duckdb"), "--live", live, *extra,
            )  # fmt: skip

        sides = [
            Side("live", session("on"), "the whole agent (Session, headless), live analysis on"),
            Side("no-live", session("off"), "the same agent with live_analysis=False"),
        ]
        got = interleaved(sides, rounds=span.rounds, window=span.window, warmup=span.warmup)
    note_span(report, span)
    report_sides(report, sides, got)
    judge_resolution(report, got)
    judge_live_cpu(report, got["live"], got["no-live"], LIVE_CPU_TARGET)
    seen = json.loads(health.read_text()) if health.exists() else {}
    if seen.get("seconds"):
        own = 100 * float(seen.get("analysis.cpu_s", 0.0)) / float(seen["seconds"])
        report.info(
            f"analysis thread's own CPU over {seen['seconds']:.0f} s "
            f"({seen.get('analysis.passes', 0)} passes), % of one core",
            f"{own:.3f}",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="latency: rounds (3)")
    parser.add_argument("--quick", action="store_true", help="one case per rule; short CPU span")
    add_span_args(parser, prefix="cpu-")
    parser.add_argument("--no-cpu", action="store_true", help="skip the whole-agent CPU part")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency part")
    parser.add_argument("--case", action="append", help="latency: only this scenario (repeat)")
    args = parser.parse_args(argv)
    span = apply_span(args, prefix="cpu-")
    if args.rounds < 3:
        raise SystemExit("benchmarks need at least 3 rounds (min / median / max)")
    if args.quick and not args.case:
        args.case = list(QUICK_CASES)
    report = Report("live analysis: first finding per rule, and its CPU")
    try:
        with tempfile.TemporaryDirectory(prefix="aw-live-") as tmp:
            if not args.no_latency:
                bench_latency(report, Path(tmp), args.rounds, args.case)
            if not args.no_cpu:
                bench_cpu(report, Path(tmp), span)
    except Exception as exc:  # one line and exit 1, never a traceback mid-table
        return fail(exc)
    return report.print()


if __name__ == "__main__":
    sys.exit(main())
