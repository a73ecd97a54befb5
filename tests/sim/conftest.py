"""Fixtures for the simulated NVML driver: a fake clock and an installer that cleans up."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pynvml
import pytest

from collectors.sim import SimulatedNvml, install


class FakeClock:
    """Wall-clock stand-in; tests step simulated time explicitly."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def simulate(clock: FakeClock) -> Iterator[Callable[..., SimulatedNvml]]:
    """Install a scenario on the fake clock and nvmlInit(); undone after the test."""
    installed: list[SimulatedNvml] = []

    def start(scenario: object, *, init: bool = True, **kwargs: object) -> SimulatedNvml:
        sim = install(scenario, clock=clock, **kwargs)  # type: ignore[arg-type]
        installed.append(sim)
        if init:
            pynvml.nvmlInit()
        return sim

    yield start
    for sim in reversed(installed):
        while sim.driver._refcount:
            pynvml.nvmlShutdown()
        sim.uninstall()
