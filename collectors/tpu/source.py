"""The TPU source's one declaration, found through the ``accelwatch.sources`` entry point group.

Chips are ``accelerator`` entities and the devices of two-device chips ``accelerator.part``
entities, so every role-based rule, card and exporter applies to them with no TPU case.
Heavy modules (gRPC, the libtpu stubs, the simulator) load inside the factories only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.source import Collector, EntityKind, SourceSpec
from collectors.tpu.metrics import METRICS, SOURCE


def _collector() -> Collector:
    from collectors.tpu.collector import TpuCollector

    return TpuCollector()


def _tpu_part(scenario: str) -> Any:
    from collectors.sim import load_scenario

    loaded = load_scenario(scenario)  # ScenarioError is a ValueError: one line
    if loaded.tpu is None:
        raise ValueError(f"scenario {scenario!r} simulates 'tpu' but has no [tpu] table")
    return loaded


def _simulator(scenario: str, owner_pids: Callable[[], list[int]] | None = None) -> Any:
    """Serve the scenario's TPU VM on 127.0.0.1 and point the collector at it."""
    from collectors.sim.tpu.vm import install

    return install(_tpu_part(scenario), owner_pids)


def _check_scenario(scenario: str) -> None:
    _tpu_part(scenario)


SPEC = SourceSpec(
    name=SOURCE,
    label="TPU",
    metrics=METRICS,
    entity_kinds=(
        EntityKind(
            "accelerator",
            r"tpu[0-9]+",
            {"hw.id": "{entity}", "hw.name": "{name}", "hw.type": "tpu"},
        ),
        EntityKind(
            "accelerator.part",
            r"tpu[0-9]+/core[0-9]+",
            {"hw.id": "{entity}", "hw.name": "{name}", "hw.parent": "{chip}"},
        ),
    ),
    collector=_collector,
    simulator=_simulator,
    check_scenario=_check_scenario,
)
