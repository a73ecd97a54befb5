"""The measured span of the whole-agent benchmarks: the steady state by default, and its verdicts.

An agent costs more after its first minutes: the live analysis' window fills for
``DEFAULT_WINDOW_S`` and every ``LIVE_FULL_PERIOD_S`` a full pass runs every rule (a burst of
about a second). So the default span starts once the window has filled and lasts one whole
full-pass period (it holds one full pass, whatever its phase), and a CPU verdict is the ratio
over that whole span (total CPU / total CPU): the per-window min / median / max are printed
beside it. ``--quick`` (or any shorter span) measures the first minutes only and says so.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from agent.analysis.live import DEFAULT_WINDOW_S
from agent.analysis.thresholds import LIVE_FULL_PERIOD_S
from benchmarks._common import Measured, Report, Side, ratios, spread
from benchmarks._cpu import TICK_S

WINDOW_S = 60.0
#: The live window has filled, and the agent's start (imports, first ticks) is 30 s behind.
STEADY_WARMUP_S = DEFAULT_WINDOW_S + 30.0
#: Windows that last one whole full-pass period, and one more: the second full pass falls about
#: a period after the first (at the window's filling, plus the agent's start), at the end of a
#: span of exactly one period (the last window, measured 2 Dec); one more window keeps it inside
#: with a margin, and the next pass is a whole period later, outside.
STEADY_WINDOWS = math.ceil(LIVE_FULL_PERIOD_S / WINDOW_S) + 1
QUICK_WINDOWS, QUICK_WINDOW_S, QUICK_WARMUP_S = 3, 10.0, 20.0
#: ns CPU and psutil's ticks of one window may differ by a truncated tick per counter (user,
#: system) at each edge: within 2 ticks; more means one of the two does not count the process.
AGREE_TICKS = 2.0


@dataclass(frozen=True)
class Span:
    """The measured windows: ``rounds`` of ``window`` seconds after ``warmup`` seconds."""

    rounds: int
    window: float
    warmup: float

    @property
    def steady(self) -> bool:
        """After the live window has filled, and one whole full-pass period long."""
        return self.warmup >= DEFAULT_WINDOW_S and self.rounds * self.window >= LIVE_FULL_PERIOD_S


def add_span_args(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--{prefix}rounds`` (windows), ``--{prefix}window``, ``--{prefix}warmup`` with
    steady-state defaults; ``--quick`` (unless another part of the benchmark adds it)."""
    parser.add_argument(
        f"--{prefix}rounds", type=int, default=STEADY_WINDOWS,
        help=f"measured windows (default {STEADY_WINDOWS}: one full-pass period)",
    )  # fmt: skip
    parser.add_argument(
        f"--{prefix}window", type=float, default=WINDOW_S, help=f"seconds per window ({WINDOW_S:g})"
    )  # fmt: skip
    parser.add_argument(
        f"--{prefix}warmup", type=float, default=STEADY_WARMUP_S,
        help=f"seconds before measuring ({STEADY_WARMUP_S:g}: the live window has filled)",
    )  # fmt: skip
    if not prefix:
        parser.add_argument(
            "--quick", action="store_true",
            help=f"{QUICK_WINDOWS} windows of {QUICK_WINDOW_S:g} s after {QUICK_WARMUP_S:g} s: "
            "the first minutes only",
        )  # fmt: skip


def apply_span(args: argparse.Namespace, prefix: str = "") -> Span:
    """The span the options ask for (``--quick``'s, if given); its values are set back on
    ``args``, so a benchmark's title can print them."""
    key = prefix.replace("-", "_")
    if args.quick:
        for name, value in (("rounds", QUICK_WINDOWS), ("window", QUICK_WINDOW_S),
                            ("warmup", QUICK_WARMUP_S)):  # fmt: skip
            setattr(args, key + name, value)
    span = Span(
        getattr(args, key + "rounds"), getattr(args, key + "window"), getattr(args, key + "warmup")
    )
    if span.rounds < 3:
        raise SystemExit("benchmarks need at least 3 windows (min / median / max)")
    return span


def note_span(report: Report, span: Span) -> None:
    """One line saying what the span covers."""
    if span.steady:
        report.note(
            f"steady state: {span.rounds} windows of {span.window:g} s after {span.warmup:g} s "
            f"(live window {DEFAULT_WINDOW_S:g} s filled; the span holds one full pass, every "
            f"{LIVE_FULL_PERIOD_S:g} s); CPU verdicts: the whole span's ratio"
        )
    else:
        report.note(
            f"FIRST MINUTES ONLY: {span.rounds} windows of {span.window:g} s after "
            f"{span.warmup:g} s, not after the live window ({DEFAULT_WINDOW_S:g} s) has filled "
            f"nor over a whole analysis period ({LIVE_FULL_PERIOD_S:g} s): not the steady state"
        )


def report_sides(report: Report, sides: Sequence[Side], got: dict[str, Measured]) -> None:
    """What each side includes, and the span it was measured over."""
    for side in sides:
        m = got[side.name]
        report.side(
            side.name, f"{side.includes} [measured {m.start_min:.1f}-{m.end_min:.1f} min "
            "after its start]",
        )  # fmt: skip


def cpu_row(report: Report, m: Measured) -> None:
    """A side's CPU, % of one core: per window, and over the whole span."""
    report.info(
        f"{m.side.name}: CPU, % of one core (windows; span)",
        f"{spread([c * 100 for c in m.cpu])}; {m.span_cpu * 100:.2f}",
    )


def burst_row(report: Report, m: Measured) -> None:
    """How much more CPU the side's busiest window used than its median window: in the steady
    span, where the live analysis' full pass shows (about a second every full-pass period)."""
    extra = [s.cpu_s - statistics.median(x.cpu_s for x in m.slots) for s in m.slots]
    busiest = max(range(len(extra)), key=extra.__getitem__)
    report.info(
        f"{m.side.name}: busiest window's CPU above the median window's (s; window)",
        f"{extra[busiest]:+.2f}; {busiest + 1} of {len(extra)}",
    )


def judge_ratio(report: Report, label: str, a: Measured, b: Measured, target: float) -> None:
    """A / B's CPU: per window (information) and over the whole span (the verdict)."""
    report.info(f"{label}, per window", spread(ratios(a.cpu, b.cpu)))
    whole = a.span_cpu / b.span_cpu if b.span_cpu > 0 else float("inf")
    report.target(f"{label}, whole span", f"{whole:.3f}", f"<= {target:g}x", whole <= target)


def judge_extra(report: Report, label: str, a: Measured, b: Measured, target: float) -> None:
    """(A - B) / B's CPU, in %: per window (information) and over the whole span (verdict)."""
    per = [(x - y) / y * 100 if y > 0 else float("inf") for x, y in zip(a.cpu, b.cpu)]
    report.info(f"{label}, per window", spread(per, "{:+.1f}%"))
    whole = (a.span_cpu - b.span_cpu) / b.span_cpu if b.span_cpu > 0 else float("inf")
    report.target(
        f"{label}, whole span", f"{whole * 100:+.1f}%", f"<= +{target:.0%}", whole <= target
    )


def judge_live_cpu(report: Report, on: Measured, off: Measured, target: float) -> None:
    """The live analysis' cost: the whole agent with it on minus the same agent with it off,
    in points of one core, over the same windows; the whole span's difference is the verdict."""
    cpu_row(report, on)
    cpu_row(report, off)
    report.info(
        "live analysis: live - no-live, % of one core, per window",
        spread([(a - b) * 100 for a, b in zip(on.cpu, off.cpu)], "{:+.2f}"),
    )
    extra = (on.span_cpu - off.span_cpu) * 100
    report.target(
        "live analysis: live - no-live, % of one core, whole span", f"{extra:+.3f}",
        f"<= {target:.1%}", extra <= target * 100,
    )  # fmt: skip


def judge_resolution(report: Report, got: dict[str, Measured]) -> None:
    """The ns counter and psutil's ticks agree on every side's every window (a check that
    the ns clock counts the measured process, all its threads)."""
    worst = max(abs(s.cpu_s - s.ticks_cpu_s) / TICK_S for m in got.values() for s in m.slots)
    report.target(
        "ns CPU vs psutil's ticks, worst window of any side (ticks)", f"{worst:.2f}",
        f"<= {AGREE_TICKS:g}", worst <= AGREE_TICKS,
    )  # fmt: skip
