"""The storage source's one declaration, found through the ``accelwatch.sources`` entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.catalog.storage import METRICS, SOURCE
from agent.source import Collector, EntityKind, SourceSpec


def _collector() -> Collector:
    from collectors.storage.collector import StorageCollector

    return StorageCollector()


def _simulator(scenario: str, owner_pids: Callable[[], list[int]] | None = None) -> Any:
    from collectors.sim.fabric_storage import install

    return install(scenario, "storage")


def _check_scenario(scenario: str) -> None:
    from collectors.sim.fabric_storage.sim import part_of

    part_of(scenario, "storage")


SPEC = SourceSpec(
    name=SOURCE,
    label="Storage (the job's mounts)",
    metrics=METRICS,
    entity_kinds=(
        EntityKind(
            "mount",
            "mount:(?P<mount>.+)",
            # the type comes from the mount's described attributes (nfs4, lustre, xfs ...)
            {"system.filesystem.mountpoint": "{mount}", "system.filesystem.type": "{fstype}"},
        ),
        EntityKind(
            "mount.op",
            "nfsop:(?P<op>[A-Z0-9_]+)@(?P<mount>.+)",
            {"system.filesystem.mountpoint": "{mount}", "rpc.method": "{op}"},
        ),
    ),
    collector=_collector,
    simulator=_simulator,
    check_scenario=_check_scenario,
    start_order=30,
)
