"""The TPU source's one declaration, found through the ``accelwatch.sources`` entry point group.

Chips are ``accelerator`` entities and the devices of two-device chips ``accelerator.part``
entities, so every role-based rule, card and exporter applies to them with no TPU case.
Heavy modules (gRPC, the libtpu stubs, the simulator) load inside the factories only.
"""

from __future__ import annotations

from typing import Any

from agent.source import Collector, EntityKind, SourceSpec
from collectors.tpu.metrics import METRICS, SOURCE


def _collector() -> Collector:
    from collectors.tpu.collector import TpuCollector

    return TpuCollector()


def _simulator(scenario: Any, owner_pids: Any = None) -> Any:
    from collectors.sim.tpu.vm import install

    return install(scenario, owner_pids)


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
)
