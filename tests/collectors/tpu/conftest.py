"""A simulated TPU VM on a clock the test drives, and a collector pointed at it."""

from __future__ import annotations

import os

import pytest

from agent.source import CollectContext
from collectors.sim.scenario import load_scenario
from collectors.sim.tpu.vm import SimulatedTpu
from collectors.tpu.collector import TpuCollector
from tests.helpers import VALUES_DEADLINE_S


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tpu_vm(tmp_path, clock):
    """``tpu_vm(name)`` → (sim, collector), started; both stopped at teardown."""
    made = []

    def make(name: str, *, deadline: float = VALUES_DEADLINE_S, start: bool = True):
        scenario = load_scenario(name).tpu
        assert scenario is not None, name
        sim = SimulatedTpu(
            scenario, root=tmp_path / "vm", owner_pids=lambda: [os.getpid()], clock=clock
        )
        collector = TpuCollector(env=sim.env, deadline=deadline)
        made.append((sim, collector))
        if start:
            pid = os.getpid()
            collector.start(CollectContext(pid, lambda: frozenset([pid])))
        return sim, collector

    yield make
    for sim, collector in made:
        collector.close()
        sim.uninstall()
