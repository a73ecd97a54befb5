"""The fabric source's one declaration, found through the ``accelwatch.sources`` entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.catalog.fabric import METRICS, SOURCE
from agent.source import Collector, EntityKind, SourceSpec


def _collector() -> Collector:
    from collectors.fabric.collector import FabricCollector

    return FabricCollector()


def _simulator(scenario: str, owner_pids: Callable[[], list[int]] | None = None) -> Any:
    """Write the scenario's fake InfiniBand / mounts tree and advance it as the run goes."""
    from collectors.sim.fabric_storage import install

    return install(scenario, "fabric")


def _check_scenario(scenario: str) -> None:
    from collectors.sim.fabric_storage.sim import part_of

    part_of(scenario, "fabric")


SPEC = SourceSpec(
    name=SOURCE,
    label="Fabric (InfiniBand, RoCE, NICs)",
    metrics=tuple(METRICS),
    entity_kinds=(
        EntityKind(
            "port",
            "ib:(?P<port>(?P<hca>[^/]+)/(?P<number>[0-9]+))",
            {
                "system.device": "{port}",
                "accelwatch.ib.device": "{hca}",
                "accelwatch.ib.port": "{number}",
            },
        ),
        EntityKind("interface", "net:(?P<interface>.+)", {"network.interface.name": "{interface}"}),
    ),
    collector=_collector,
    simulator=_simulator,
    check_scenario=_check_scenario,
    start_order=20,
)
