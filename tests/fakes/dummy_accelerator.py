"""A dummy accelerator source defined only here: busy, memory and power, nothing driver-specific.

It proves that a new accelerator needs nothing but its declaration: once registered, its devices
are entities of kind ``accelerator`` and its metrics play the accelerator roles, so analysis,
TUI cards, report and exporters treat ``dev0`` as they treat ``gpu0``.

Use the ``dummy_accelerator`` fixture (registered in ``tests/conftest.py``): it registers the source
in the process-wide registry for one test and yields a :class:`DummyAccelerator` whose
``model`` the test sets (``model.set(0, busy=0.9)``); every collector the source builds reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from agent.catalog import metric
from agent.model import Batch, BatchBuilder
from agent.registry import default_registry
from agent.source import CollectContext, Collector, EntityKind, SourceSpec

SOURCE = "dummy"
GIB = 1 << 30

METRICS = (
    metric(
        "dummy.busy",
        "1",
        "gauge",
        "Share of time the dummy device computed.",
        source=SOURCE,
        role="accelerator.busy",
    ),
    metric(
        "dummy.memory.used",
        "By",
        "gauge",
        "Dummy device memory in use.",
        source=SOURCE,
        role="accelerator.memory.used",
    ),
    metric(
        "dummy.memory.total",
        "By",
        "gauge",
        "Dummy device memory size.",
        source=SOURCE,
        role="accelerator.memory.total",
    ),
    metric(
        "dummy.power",
        "W",
        "gauge",
        "Dummy device power draw.",
        source=SOURCE,
        role="accelerator.power",
    ),
)


@dataclass
class DummyDevice:
    """One device's current values; the collector reports whatever the test set last."""

    busy: float = 0.0
    memory_used: float = 30 * GIB
    memory_total: float = 80 * GIB
    power: float = 60.0


@dataclass
class DummyModel:
    """The devices a dummy collector sees; ``idle_reserved`` is the default: memory held, no work."""

    devices: list[DummyDevice] = field(default_factory=lambda: [DummyDevice(), DummyDevice()])

    @classmethod
    def idle_reserved(cls, count: int = 2) -> DummyModel:
        """Devices holding 30 GiB of 80 with nothing running: what an idle-reserved rule flags."""
        return cls([DummyDevice() for _ in range(count)])

    @classmethod
    def busy(cls, count: int = 2) -> DummyModel:
        return cls([DummyDevice(busy=0.95, power=300.0) for _ in range(count)])

    def set(self, index: int, **values: float) -> None:
        device = self.devices[index]
        for name, value in values.items():
            if not hasattr(device, name):
                raise AttributeError(f"DummyDevice has no {name!r}")
            setattr(device, name, value)


class DummyCollector(Collector):
    """Reports the model's devices as ``dev0``, ``dev1``... and describes each once."""

    source = SOURCE

    def __init__(self, model: DummyModel) -> None:
        self.model = model
        self._described: set[str] = set()

    def start(self, ctx: CollectContext) -> None:
        self._described.clear()

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        for i, device in enumerate(self.model.devices):
            entity = f"dev{i}"
            if entity not in self._described:
                b.describe(entity, name="Dummy Accelerator", uuid=f"DUMMY-{i:04d}")
                self._described.add(entity)
            b.add(entity, "dummy.busy", device.busy)
            b.add(entity, "dummy.memory.used", device.memory_used)
            b.add(entity, "dummy.memory.total", device.memory_total)
            b.add(entity, "dummy.power", device.power)
        return b.build()


def make_spec(model: DummyModel) -> SourceSpec:
    """The dummy source's declaration; its collectors read ``model``."""
    return SourceSpec(
        name=SOURCE,
        label="Dummy accelerator (tests)",
        metrics=METRICS,
        entity_kinds=(
            EntityKind(
                "accelerator",
                "dev(?P<index>[0-9]+)",
                {"hw.id": "{uuid}", "hw.name": "{name}", "hw.type": "dummy"},
            ),
        ),
        collector=lambda: DummyCollector(model),
    )


@dataclass
class DummyAccelerator:
    spec: SourceSpec
    model: DummyModel


@pytest.fixture
def dummy_accelerator() -> Iterator[DummyAccelerator]:
    """The dummy source registered in the process-wide registry (and CATALOG) for one test."""
    model = DummyModel.idle_reserved()
    spec = make_spec(model)
    registry = default_registry()
    registry.register(spec)
    try:
        yield DummyAccelerator(spec, model)
    finally:
        registry.unregister(SOURCE)
