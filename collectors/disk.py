"""Disk source: bytes, operations and busy time per block device (psutil's diskstats view).

Loop, RAM and zram devices are left out: they are not storage the job waits on. The counters
come from one read of ``/proc/diskstats`` (kept open on the kernel's procfs, read again at
offset 0) with psutil's line rules and wrap rule, so they are the values
``psutil.disk_io_counters(perdisk=True)`` gives without its existence checks, text decoding
and named tuples; psutil answers where the file cannot be read or parsed.
"""

from __future__ import annotations

import os
from typing import Any

import psutil

from agent.catalog.disk import ENTITY_PREFIX, METRICS, SOURCE
from agent.model import Batch, BatchBuilder
from agent.source import Collector, EntityKind, SourceSpec
from collectors.procfs import KeptFile, Unwrapped

_SKIPPED_DISK_PREFIXES = ("loop", "ram", "zram")
_SKIPPED_BYTES = tuple(p.encode() for p in _SKIPPED_DISK_PREFIXES)
_ROW = (
    "host.disk.read_bytes",
    "host.disk.write_bytes",
    "host.disk.read_ops",
    "host.disk.write_ops",
    "host.disk.busy_time",
)
SECTOR = 512  # diskstats counts 512-byte sectors whatever the device's own sector size


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


def disk_counters(data: bytes) -> tuple[dict[str, tuple[int, ...]], int]:
    """(read bytes, write bytes, reads, writes, busy ms) of each device but loop, RAM and
    zram in a ``diskstats`` file, by psutil's rules: 15 columns (Linux 2.4), 14 or 18 and more
    (2.6+, 4.18+, 5.5+), 7 (a 2.6 partition: no busy time); any other line is a ValueError.
    With them, how many devices the file lists."""
    out: dict[str, tuple[int, ...]] = {}
    lines = data.splitlines()
    for line in lines:
        f = line.split()
        n = len(f)
        if n == 15:
            name, reads = f[3], int(f[2])
            _, rbytes, _, writes, _, wbytes, _, _, busy, _ = map(int, f[4:14])
        elif n == 14 or n >= 18:
            name = f[2]
            reads, _, rbytes, _, writes, _, wbytes, _, _, busy, _ = map(int, f[3:14])
        elif n == 7:
            name = f[2]
            reads, rbytes, writes, wbytes = map(int, f[3:7])
            busy = 0
        else:
            raise ValueError(f"not a diskstats line: {line!r}")
        if not name.startswith(_SKIPPED_BYTES):
            out[name.decode("utf-8", "surrogateescape")] = (
                rbytes * SECTOR,
                wbytes * SECTOR,
                reads,
                writes,
                busy,
            )
    return out, len(lines)


class DiskCollector(Collector):
    """Cumulative counters per block device; rates are left to the store."""

    source = SOURCE

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        keep = os.path.realpath(proc) == "/proc"
        self._file = KeptFile(f"{proc}/diskstats", keep=keep, records=True)
        self._counters = Unwrapped()

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        try:
            disks = self._counters.run(*disk_counters(self._file.read()))
        except (OSError, ValueError):
            add_disks(b, psutil.disk_io_counters(perdisk=True) or {})
            return b.build()
        prefix = ENTITY_PREFIX
        for name, (rbytes, wbytes, reads, writes, busy) in disks.items():
            b.add_row(
                f"{prefix}{name}",
                _ROW,
                [float(rbytes), float(wbytes), float(reads), float(writes), busy / 1000],
            )
        return b.build()

    def close(self) -> None:
        self._file.close()


SPEC = SourceSpec(
    name=SOURCE,
    label="Disks",
    metrics=tuple(METRICS),
    entity_kinds=(EntityKind("disk", "disk:(?P<device>.+)", {"system.device": "{device}"}),),
    collector=DiskCollector,
    start_order=20,
)
