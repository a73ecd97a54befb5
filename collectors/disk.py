"""Disk source: bytes, operations and busy time per block device (psutil's diskstats view).

Loop, RAM and zram devices are left out: they are not storage the job waits on.
"""

from __future__ import annotations

from typing import Any

import psutil

from agent.catalog.disk import ENTITY_PREFIX, METRICS, SOURCE
from agent.model import Batch, BatchBuilder
from agent.source import Collector, EntityKind, SourceSpec

_SKIPPED_DISK_PREFIXES = ("loop", "ram", "zram")


def add_disks(b: BatchBuilder, counters: dict[str, Any]) -> None:
    """Add psutil ``disk_io_counters(perdisk=True)`` values to ``b`` (a pure function of them)."""
    for name, io in counters.items():
        if name.startswith(_SKIPPED_DISK_PREFIXES):
            continue
        entity = f"{ENTITY_PREFIX}{name}"
        b.add(entity, "host.disk.read_bytes", io.read_bytes)
        b.add(entity, "host.disk.write_bytes", io.write_bytes)
        b.add(entity, "host.disk.read_ops", io.read_count)
        b.add(entity, "host.disk.write_ops", io.write_count)
        busy_ms = getattr(io, "busy_time", None)
        b.add(entity, "host.disk.busy_time", None if busy_ms is None else busy_ms / 1000)


class DiskCollector(Collector):
    """Cumulative counters per block device; rates are left to the store."""

    source = SOURCE

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        add_disks(b, psutil.disk_io_counters(perdisk=True) or {})
        return b.build()


SPEC = SourceSpec(
    name=SOURCE,
    label="Disks",
    metrics=tuple(METRICS),
    entity_kinds=(EntityKind("disk", "disk:(?P<device>.+)", {"system.device": "{device}"}),),
    collector=DiskCollector,
    start_order=20,
)
