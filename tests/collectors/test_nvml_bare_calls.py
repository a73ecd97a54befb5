"""The benchmark's bare loop makes exactly the NVML collector's driver calls, symbol by symbol.

``bench_nvml``'s agent / bare ratio is only honest if both sides ask the driver the same
things; counted where the calls land (the simulated driver, after nvidia-ml-py's wrappers).
"""

from __future__ import annotations

import pynvml
import pytest

from agent.source import CollectContext
from benchmarks._baselines import nvml_tick
from collectors.nvml import NvmlCollector
from collectors.sim import install, load_scenario
from collectors.sim.calls import count_calls
from tests.collectors.nvml_harness import JOB_PIDS, FakeClock

TICKS = 6


@pytest.fixture
def healthy():
    clock = FakeClock()
    sim = install(load_scenario("healthy"), clock=clock, job_pids=lambda: list(JOB_PIDS))
    calls = count_calls(sim)
    yield sim, clock, calls
    pynvml._nvmlGetFunctionPointer_cache.clear()
    while sim.driver._refcount:
        pynvml.nvmlShutdown()
    sim.uninstall()


def per_tick(calls, clock: FakeClock, tick) -> dict[str, float]:
    tick()  # the first tick: GPM has no previous sample yet, on both sides
    clock.now += 1.0
    before = dict(calls)
    for _ in range(TICKS):
        tick()
        clock.now += 1.0
    return {k: (v - before.get(k, 0)) / TICKS for k, v in calls.items() if v != before.get(k, 0)}


def test_the_bare_loop_makes_the_collectors_driver_calls_symbol_by_symbol(healthy):
    sim, clock, calls = healthy
    collector = NvmlCollector(clock=clock, watch_events=False)
    collector.start(CollectContext(root_pid=None, job_pids=lambda: frozenset(JOB_PIDS)))
    try:
        agent = per_tick(calls, clock, lambda: collector.collect(clock.now))
    finally:
        collector.close()
    bare = per_tick(calls, clock, nvml_tick())
    assert agent == bare
    assert agent["nvmlDeviceGetFieldValues"] == sim.scenario.gpu_count  # one request per GPU
    assert sum(agent.values()) == 15 * sim.scenario.gpu_count  # fields, GPM pair, 12 direct
