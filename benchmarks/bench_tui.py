"""The agent with its live UI against nvitop's TUI, both in a terminal of the same size.

Three programs run at once, each in its own tmux window of ``--size`` (a real terminal
emulator: it parses every escape code, answers the programs' terminal queries and delivers
keys; ``--pty`` uses a bare pseudo-terminal instead), on the same simulated GPUs (8 H100s,
scenario ``healthy``) at a 1 s interval:

* agent-ui: ``accelwatch attach ROOT --simulate healthy --db TMP``: the whole agent process
  (all threads: sampler, collectors, store writer, live analysis, the Textual UI) watching a
  real 32-process tree;
* nvitop-ui: ``nvitop --interval 1`` (``benchmarks._baselines nvitop-tui``): nvitop's whole
  TUI process, with the same simulated driver installed in it (its cost is on both sides);
* headless: the same ``attach`` with ``--headless`` (same tree, devices and terminal),
  so the UI's own share (agent-ui minus headless, CPU and RSS) is printed beside the
  ratio; it is information, not a target.

Each is measured whole over the same windows (the process's CPU-time clock in ns, all threads;
RSS), by default in the steady state (``benchmarks._span``: after the live analysis' window has
filled, over one whole full-pass period); the agent's threads are printed by name beside it (``main`` is the UI's
event loop with the UI, the live line printer headless; ``other`` holds Textual's input and
output threads and DuckDB's). Then, with both still running, the agent's key-to-render latency: from
writing ``s`` (sort) into its terminal until the output carrying the result ("processes · sort
...") comes back. Targets (issue 14): agent-ui / nvitop-ui <= 1.0x (CPU over the whole span),
agent-ui RSS <= 100 MB (the largest window), median key-to-render <= 50 ms. Exits 1 on a MISS.

    python benchmarks/bench_tui.py [--rounds 11] [--window 60] [--warmup 630] [--keys 10]
                                   [--size 160x48] [--pty] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    ESCAPES,
    BenchmarkError,
    Child,
    Report,
    Side,
    agent_argv,
    baseline_argv,
    fail,
    interleaved,
    process_tree,
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
from benchmarks._tmux import TmuxChild, tmux_available  # noqa: E402

TARGET_RATIO = 1.0
TARGET_RSS_MB = 100.0
TARGET_LATENCY_S = 0.050
SORT_ORDER = ("cpu", "rss", "gpu_mem", "io", "tree")


def sides(root: int, tmp: Path, size: tuple[int, int], terminal: str) -> list[Side]:
    db, headless_db = tmp / "tui.duckdb", tmp / "headless.duckdb"
    where = f"in a {size[0]}x{size[1]} {terminal}"
    return [
        Side(
            "agent-ui",
            agent_argv("attach", str(root), "--simulate", "healthy", "--db", str(db)),
            f"the whole agent process with its live UI (all threads), {where}",
            terminal=size,
        ),
        Side(
            "nvitop-ui",
            baseline_argv("nvitop-tui", "--pid", str(root), "--scenario", "healthy"),
            f"nvitop --interval 1, the whole process, {where}",
            terminal=size,
        ),
        Side(
            "headless",
            agent_argv(
                "attach", str(root), "--simulate", "healthy", "--headless", "--db", str(headless_db)
            ),
            "the same agent process without its UI (--headless; all threads), same terminal",
            terminal=size,
        ),
    ]


def key_latencies(agent: Child, keys: int) -> list[float]:
    """Seconds from each ``s`` until the new sort order shows (missing ones left out)."""
    out = []
    for press in range(keys):
        expected = SORT_ORDER[press % len(SORT_ORDER)]
        time.sleep(0.6)
        since, sent = agent.received, time.perf_counter()
        agent.type_keys(b"s")
        seen = agent.wait_for(f"processes · sort {expected}".encode(), since)
        if seen is not None:
            out.append(seen - sent)
    return out


def checked(children: dict[str, Child], keys: int) -> list[float]:
    """Every side really shows the simulated GPUs; then the agent's key latencies."""
    markers = (("agent-ui", b"gpu7"), ("nvitop-ui", b"79.65GiB"), ("headless", b"gpu7="))
    for name, marker in markers:
        child = children[name]
        shown = child.screen().encode() if isinstance(child, TmuxChild) else b""
        screen = shown + ESCAPES.sub(b"", bytes(child.head))
        if marker not in screen:
            tail = screen[-1500:].decode(errors="replace")
            raise BenchmarkError(f"{name} does not show the simulated GPUs:\n{tail}")
    return key_latencies(children["agent-ui"], keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_span_args(parser)
    parser.add_argument("--keys", type=int, default=10, help="sort key presses to time")
    parser.add_argument("--size", default="160x48", help="terminal COLUMNSxROWS")
    parser.add_argument("--pty", action="store_true", help="a bare pseudo-terminal, not tmux")
    args = parser.parse_args(argv)
    span = apply_span(args)
    if args.quick:
        args.keys = 5
    cols, rows = (int(v) for v in args.size.split("x"))
    latencies: list[float] = []
    use_tmux = not args.pty and tmux_available()
    terminal = "tmux window" if use_tmux else "pseudo-terminal (no tmux)"
    try:
        with tempfile.TemporaryDirectory() as tmp, process_tree(32) as root:
            all_sides = sides(root, Path(tmp), (cols, rows), terminal)
            got = interleaved(
                all_sides,
                rounds=args.rounds,
                window=args.window,
                warmup=args.warmup,
                then=lambda children: latencies.extend(checked(children, args.keys)),
                start=TmuxChild if use_tmux else Child,  # type: ignore[arg-type]
            )
    except Exception as exc:  # one line and exit 1, never a traceback mid-table
        return fail(exc)
    report = Report(
        f"TUI at {args.size}: 8 simulated H100s, 32-process tree, 1 s interval, "
        f"{args.rounds} windows of {args.window:g} s, every side in each"
    )
    note_span(report, span)
    report_sides(report, all_sides, got)
    agent, nvitop, headless = got["agent-ui"], got["nvitop-ui"], got["headless"]
    for m in (agent, nvitop, headless):
        cpu_row(report, m)
    burst_row(report, agent)
    burst_row(report, headless)
    report_threads(report, agent)  # main is the UI thread (Textual's event loop)
    report_threads(report, headless)
    report.info(
        "the UI's own CPU: agent-ui - headless (points; span)",
        f"{spread([(a - h) * 100 for a, h in zip(agent.cpu, headless.cpu)])}; "
        f"{(agent.span_cpu - headless.span_cpu) * 100:.2f}",
    )
    judge_resolution(report, got)
    judge_ratio(report, "agent-ui / nvitop-ui", agent, nvitop, TARGET_RATIO)
    rss = [s.rss_mb for s in agent.slots]
    report.target(
        "agent-ui RSS (MB)", spread(rss, "{:.0f}"), f"<= {TARGET_RSS_MB:.0f}",
        max(rss) <= TARGET_RSS_MB,
    )  # fmt: skip
    report.info("agent-ui USS (MB)", spread([s.uss_mb for s in agent.slots], "{:.0f}"))
    report.info("agent-ui PSS (MB)", spread([s.pss_mb for s in agent.slots], "{:.0f}"))
    report.info("nvitop-ui RSS (MB)", spread([s.rss_mb for s in nvitop.slots], "{:.0f}"))
    report.info("headless RSS (MB)", spread([s.rss_mb for s in headless.slots], "{:.0f}"))
    report.info(
        "the UI's own RSS: agent-ui - headless (MB)",
        spread([a.rss_mb - h.rss_mb for a, h in zip(agent.slots, headless.slots)], "{:.0f}"),
    )
    report.target(
        f"key-to-render, {len(latencies)}/{args.keys} seen (ms)",
        spread([v * 1e3 for v in latencies], "{:.0f}") if latencies else "none",
        f"<= {TARGET_LATENCY_S * 1e3:.0f}",
        len(latencies) == args.keys and statistics.median(latencies) <= TARGET_LATENCY_S,
    )
    return report.print()


if __name__ == "__main__":
    sys.exit(main())
