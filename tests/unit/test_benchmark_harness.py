"""The benchmarks' harness: ns CPU of another process, every side over the same windows, the
steady-state span by default. Real child processes, a few seconds in all (no 10-minute run)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import psutil
import pytest

from agent.analysis.live import DEFAULT_WINDOW_S
from agent.analysis.thresholds import LIVE_FULL_PERIOD_S
from benchmarks._common import Measured, Report, Side, Slot, interleaved
from benchmarks._cpu import TICK_S, cpu_clock, process_cpu_ns, thread_cpu_ns
from benchmarks._span import (
    AGREE_TICKS,
    Span,
    add_span_args,
    apply_span,
    burst_row,
    judge_ratio,
    note_span,
)

#: Spins a thread for ``argv[1]`` CPU seconds, lets it end, then says so and sleeps.
SPIN_THEN_SLEEP = """
import sys, threading, time
def spin():
    end = time.thread_time() + float(sys.argv[1])
    while time.thread_time() < end:
        pass
t = threading.Thread(target=spin, name="spinner")
t.start(); t.join()
print("spun", flush=True)
time.sleep(60)
"""
#: Spins ``argv[1]`` of every wall second, forever.
DUTY = """
import sys, time
share = float(sys.argv[1])
while True:
    start = time.monotonic()
    while time.monotonic() - start < share * 0.1:
        pass
    time.sleep(max(0.0, 0.1 - (time.monotonic() - start)))
"""


def _spun(seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN_THEN_SLEEP, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "spun"
    return child


def test_process_cpu_ns_counts_a_thread_that_has_exited() -> None:
    child = _spun(0.3)
    try:
        # join() returns before the kernel has let the thread go: wait until it has
        deadline = time.monotonic() + 5
        while len(os.listdir(f"/proc/{child.pid}/task")) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        total = process_cpu_ns(cpu_clock(child.pid)) / 1e9
        live = sum(thread_cpu_ns(child.pid).values()) / 1e9
        assert total >= 0.3  # the spinner's 0.3 s, though the thread is gone
        assert live < total - 0.25  # the live threads' schedstat no longer holds it
    finally:
        child.kill()
        child.wait()


def test_process_cpu_ns_agrees_with_psutil_within_ticks() -> None:
    child = subprocess.Popen([sys.executable, "-c", DUTY, "0.3"])
    try:
        time.sleep(0.3)
        clock, proc = cpu_clock(child.pid), psutil.Process(child.pid)

        def both() -> tuple[float, float, float]:
            """psutil's figure between two ns readings (the child runs on in between, longer
            on a loaded machine): the ticks must fall within the bracket, give or take."""
            first = process_cpu_ns(clock) / 1e9
            t = proc.cpu_times()
            return first, t.user + t.system, process_cpu_ns(clock) / 1e9

        before = both()
        time.sleep(1.0)
        after = both()
        used_ticks = after[1] - before[1]
        assert after[0] - before[2] > 0.02  # it ran (a loaded machine gives it less than 30 %)
        slack = AGREE_TICKS * TICK_S
        assert after[0] - before[2] - slack <= used_ticks <= after[2] - before[0] + slack
    finally:
        child.kill()
        child.wait()


def test_process_cpu_ns_fails_once_the_process_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    clock = cpu_clock(child.pid)
    child.wait()
    with pytest.raises(OSError):
        process_cpu_ns(clock)


def test_every_side_is_measured_over_the_same_windows() -> None:
    sides = [
        Side(name, [sys.executable, "-c", DUTY, share], name)
        for name, share in (("busy", "0.2"), ("light", "0"))
    ]
    got = interleaved(sides, rounds=3, window=0.5, warmup=0.2)
    busy, light = got["busy"], got["light"]
    assert len(busy.slots) == len(light.slots) == 3
    for a, b in zip(busy.slots, light.slots):
        assert a.wall_s == pytest.approx(b.wall_s, abs=0.05)  # the same edges, back to back
        assert abs(a.cpu_s - a.ticks_cpu_s) <= AGREE_TICKS * TICK_S
    assert busy.span_cpu == pytest.approx(
        sum(s.cpu_s for s in busy.slots) / sum(s.wall_s for s in busy.slots)
    )
    assert busy.span_cpu > 0.01 > light.span_cpu  # each side's own figures (light sleeps)
    assert 0.1 < busy.start_min * 60 < 1.0  # after the warm-up, in minutes after its start
    assert busy.end_min - busy.start_min == pytest.approx(1.5 / 60, abs=0.01)


def test_a_ratio_is_judged_over_the_whole_span() -> None:
    sides = [
        Side(name, [sys.executable, "-c", DUTY, share], name)
        for name, share in (("busy", "0.2"), ("light", "0.05"))
    ]
    got = interleaved(sides, rounds=3, window=0.3, warmup=0.1)
    report = Report("t")
    judge_ratio(report, "light / busy", got["light"], got["busy"], 0.9)
    judge_ratio(report, "busy / light", got["busy"], got["light"], 0.9)
    assert report.missed == ["busy / light, whole span"]


def _span(*argv: str) -> Span:
    parser = argparse.ArgumentParser()
    add_span_args(parser)
    return apply_span(parser.parse_args(list(argv)))


def test_default_span_is_after_the_live_window_and_one_full_pass_long() -> None:
    span = _span()
    assert span.steady
    assert span.warmup >= DEFAULT_WINDOW_S
    assert span.rounds * span.window >= LIVE_FULL_PERIOD_S


def test_quick_span_says_it_covers_the_first_minutes_only() -> None:
    span = _span("--quick")
    assert not span.steady and span.warmup + span.rounds * span.window < 120
    report = Report("t")
    note_span(report, span)
    assert report.notes and report.notes[0].startswith("FIRST MINUTES ONLY")


def test_the_busiest_window_is_named_with_its_cpu_above_the_median() -> None:
    windows = [Slot(0.01, 0, 0, cpu_s=c, wall_s=60.0) for c in (0.6, 0.6, 1.4, 0.6)]
    report = Report("t")
    burst_row(report, Measured(Side("agent", [], ""), windows))
    assert report.rows[0][1] == "+0.80; 3 of 4"
