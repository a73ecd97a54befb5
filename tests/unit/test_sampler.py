"""The sampler isolates collectors and keeps a drift-free schedule."""

from __future__ import annotations

import time

import pytest

from agent.model import Batch, BatchBuilder
from agent.sampler import Sampler
from agent.source import Collector


class Steady(Collector):
    source = "host"

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        b.add("host", "host.cpu.utilization", 0.5)
        b.add("disk:sda", "host.disk.read_bytes", now * 100)
        return b.build()


class BreaksOnSecondTick(Collector):
    source = "nvml"

    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    def collect(self, now: float) -> Batch:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("driver went away")
        b = BatchBuilder(self.source, now)
        b.add("gpu0", "gpu.utilization", 1.0)
        return b.build()

    def close(self) -> None:
        self.closed = True


def test_failing_collector_is_disabled_with_a_warning_and_others_go_on():
    broken = BreaksOnSecondTick()
    ticks: list[list[Batch]] = []
    sampler = Sampler([Steady(), broken], 1.0, sinks=[lambda now, b: ticks.append(b)])
    for t in (1.0, 2.0, 3.0, 4.0):
        sampler.step(t)
    assert broken.calls == 2 and broken.closed
    assert sampler.stats.disabled == {"nvml": "RuntimeError: driver went away"}
    events = [e for tick in ticks for b in tick for e in b.events]
    assert [(e.kind, e.entity, e.detail["severity"]) for e in events] == [
        ("collector_disabled", "nvml", "warning")
    ]
    assert all(any(b.source == "host" for b in tick) for tick in ticks)


def test_snapshot_rate_of_a_counter():
    sampler = Sampler([Steady()], 1.0)
    sampler.step(10.0)
    snap = sampler.hub.latest
    assert snap.rate("disk:sda", "host.disk.read_bytes") is None
    sampler.step(12.0)
    snap = sampler.hub.latest
    assert snap.rate("disk:sda", "host.disk.read_bytes") == 100.0
    assert snap.value("host", "host.cpu.utilization") == 0.5


def test_background_loop_keeps_the_tick_schedule():
    seen: list[float] = []
    sampler = Sampler([Steady()], 0.05, sinks=[lambda now, b: seen.append(now)])
    sampler.start()
    time.sleep(1.0)
    sampler.stop()
    assert 17 <= len(seen) <= 22  # about 20 ticks, no drift accumulation
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert max(gaps) < 0.2


def test_late_wake_up_is_one_gap_event_with_start_length_and_missed_ticks():
    ticks: list[list[Batch]] = []
    sampler = Sampler([Steady()], 1.0, sinks=[lambda now, b: ticks.append(b)], clock=lambda: 50.0)
    # Tick 3 was due at t0 + 3 = 103 (monotonic); the agent woke at 123.4 (stopped ~20 s):
    # slots 3..22 passed, the tick now taken is slot 23.
    k = sampler._reschedule(100.0, 3, 123.4, last_tick_wall=42.0)
    assert k == 23 and sampler.stats.missed_ticks == 20 and sampler.stats.gaps == 1
    sampler.step(64.0)
    (gap,) = [e for b in ticks[-1] for e in b.events if e.kind == "gap"]
    assert gap.detail["start"] == 43.0
    assert gap.detail["seconds"] == 20.0
    assert gap.detail["missed_ticks"] == 20
    assert gap.detail["late_s"] == pytest.approx(20.4)


def test_on_time_wake_up_is_no_gap():
    sampler = Sampler([Steady()], 1.0)
    assert sampler._reschedule(100.0, 3, 103.9, last_tick_wall=42.0) == 3
    assert sampler.stats.gaps == 0 and sampler.stats.missed_ticks == 0


_STOPPABLE = """
import sys, time
from agent.sampler import Sampler
from tests.unit.test_sampler import Steady
events = []
sampler = Sampler([Steady()], 0.1, sinks=[lambda now, b: events.extend(
    e for x in b for e in x.events if e.kind == "gap")])
sampler.start()
print("ready", flush=True)
sys.stdin.readline()
time.sleep(0.3)
sampler.stop()
print(repr([dict(e.detail) for e in events]), flush=True)
"""


def _state(pid: int) -> str:
    """The process's scheduler state letter from ``/proc/PID/stat`` ("T": stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_sigstop_of_the_agent_is_recorded_as_a_gap(tmp_path):
    import ast
    import os
    import signal
    import subprocess
    import sys

    from tests.helpers import REPO, wait_until

    proc = subprocess.Popen(
        [sys.executable, "-c", _STOPPABLE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        before_stop = time.time()
        os.kill(proc.pid, signal.SIGSTOP)
        assert wait_until(lambda: _state(proc.pid) == "T", timeout=30)
        stopped_by = time.time()
        time.sleep(2.0)
        resumed_from = time.time()
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write("\n")
        proc.stdin.flush()
        gaps = ast.literal_eval(proc.stdout.readline())
        answered = time.time()
    finally:
        proc.kill()
        proc.wait()
    big = [g for g in gaps if g["seconds"] >= 1.5]
    assert len(big) == 1, gaps
    (gap,) = big
    assert gap["missed_ticks"] == round(gap["seconds"] / 0.1)
    # it starts at the first tick the stop made it miss: after the last tick before the stop
    # (within an interval or two of it, more if load delayed that tick), by the stop at latest
    assert before_stop - 1.0 <= gap["start"] <= stopped_by + 0.1, (gap, before_stop, stopped_by)
    # and it lasts until the agent ran again: past SIGCONT, not past its answer
    end = gap["start"] + gap["seconds"]
    assert resumed_from - 0.2 <= end <= answered, (gap, resumed_from, answered)
