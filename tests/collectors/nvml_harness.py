"""Simulated GPUs on a fake clock plus an NvmlCollector, for the NVML collector tests."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pynvml

from agent.model import Batch
from agent.source import CollectContext
from collectors.nvml import NvmlCollector
from collectors.sim import SimulatedNvml, install, load_scenario
from collectors.sim.scenario import parse_scenario

#: PIDs the simulated driver reports on the GPUs and the collector treats as the job.
JOB_PIDS = (4101, 4102, 4103, 4104, 4105, 4106, 4107, 4108)


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def scenario_toml(model: str, count: int = 1, *, extra: str = "", workload: str = "") -> str:
    """A small scenario: ``model`` x ``count`` running a steady workload, plus ``extra`` TOML."""
    return f"""
name = "test-{model}"
seed = 7
[hardware]
model = "{model}"
count = {count}
[workload]
busy = 0.9
sm_activity = 0.8
sm_occupancy = 0.4
tensor_activity = 0.5
dram_activity = 0.4
fp16_activity = 0.3
fp32_activity = 0.1
nvlink_tx_gbps = 40.0
nvlink_rx_gbps = 30.0
pcie_tx_gbps = 2.0
pcie_rx_gbps = 3.0
memory_used_gib = 10.0
noise = 0.0
{workload}
{extra}
"""


@dataclass
class Rig:
    """A running simulation and collector; ``tick`` advances time and collects."""

    sim: SimulatedNvml
    clock: FakeClock
    collector: NvmlCollector
    batches: list[Batch] = field(default_factory=list)

    def tick(self, seconds: float = 1.0) -> Batch:
        self.clock.now += seconds
        batch = self.collector.collect(self.clock.now)
        self.batches.append(batch)
        return batch

    def run(self, ticks: int, seconds: float = 1.0) -> list[Batch]:
        return [self.tick(seconds) for _ in range(ticks)]

    def events(self, kind: str | None = None) -> list:
        return [e for b in self.batches for e in b.events if kind is None or e.kind == kind]

    def wait_for_event(self, kind: str, timeout: float = 5.0) -> list:
        """Collect (without advancing time) until the event thread delivered ``kind``."""
        deadline = time.monotonic() + timeout
        while not self.events(kind) and time.monotonic() < deadline:
            time.sleep(0.02)
            self.batches.append(self.collector.collect(self.clock.now))
        return self.events(kind)


def values(batch: Batch) -> dict[tuple[str, str], float]:
    return dict(zip(zip(batch.entities, batch.metrics), batch.values))


def series(batches: Iterable[Batch], entity: str, metric: str) -> list[float]:
    return [v for b in batches for (e, m), v in values(b).items() if (e, m) == (entity, metric)]


class RigFactory:
    """Starts rigs and tears every one down (collector closed, driver uninstalled)."""

    def __init__(self) -> None:
        self.rigs: list[Rig] = []

    def __call__(
        self,
        scenario: str,
        *,
        job: Iterable[int] = JOB_PIDS,
        gpu_pids: Iterable[int] | None = None,
        events: bool = False,
        before_start: Callable[[SimulatedNvml], None] | None = None,
        event_timeout_ms: int | None = 50,
    ) -> Rig:
        """``scenario``: a named scenario or TOML text; ``gpu_pids``: what the driver reports
        on the GPUs (default: the job's PIDs); ``job``: what the collector treats as the job;
        ``before_start``: called with the installed driver before the collector probes it;
        ``event_timeout_ms``: the XID thread's wait (None: the collector's default)."""
        clock = FakeClock()
        loaded = (
            parse_scenario(scenario, "test")
            if "[hardware]" in scenario
            else load_scenario(scenario)
        )
        reported = list(job if gpu_pids is None else gpu_pids)
        sim = install(loaded, clock=clock, job_pids=lambda: reported)
        if before_start is not None:
            before_start(sim)
        waits = {} if event_timeout_ms is None else {"event_timeout_ms": event_timeout_ms}
        collector = NvmlCollector(clock=clock, watch_events=events, **waits)
        rig = Rig(sim, clock, collector)
        self.rigs.append(rig)
        job_set = frozenset(job)
        collector.start(CollectContext(root_pid=None, job_pids=lambda: job_set))
        return rig

    def close(self) -> None:
        for rig in reversed(self.rigs):
            pynvml._nvmlGetFunctionPointer_cache.clear()  # drop wrappers a test installed
            rig.collector.close()
            while rig.sim.driver._refcount:
                pynvml.nvmlShutdown()
            rig.sim.uninstall()


def count_calls(sim: SimulatedNvml, symbol: str) -> list[int]:
    """Wrap one simulated NVML symbol so every call is counted; returns the (live) count."""
    calls = [0]
    original = getattr(sim.driver, symbol)

    def counted(*args):
        calls[0] += 1
        return original(*args)

    wrapper = ctypes.CFUNCTYPE(original.restype, *original.argtypes)(counted)
    sim.driver._symbols[symbol + "#counted"] = wrapper  # keep the callback alive
    setattr(sim.driver, symbol, wrapper)
    pynvml._nvmlGetFunctionPointer_cache.clear()
    return calls
