"""The sampler isolates collectors and keeps a drift-free schedule."""

from __future__ import annotations

import time

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
