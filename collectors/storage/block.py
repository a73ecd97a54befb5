"""The block device behind a local mount: ``<sys>/block/<dev>[/<part>]/stat`` (block/stat.rst).

Fields: reads, read merges, sectors read, read ms, writes, write merges, sectors written,
write ms, in flight, io ms (busy), weighted ms in queue, then discard and flush fields.
Sectors are 512 bytes whatever the device's block size.
"""

from __future__ import annotations

import os

from agent.model import BatchBuilder
from collectors.fabric.counters import Cumulative

SECTOR = 512
READS, READ_SECTORS, READ_MS, WRITES, WRITE_SECTORS, WRITE_MS, IO_MS, QUEUE_MS = (
    0,
    2,
    3,
    4,
    6,
    7,
    9,
    10,
)


def parse_block_stat(data: bytes | str) -> tuple[int, ...] | None:
    try:
        values = tuple(int(f) for f in data.split())
    except ValueError:
        return None
    return values if len(values) >= 11 else None


def block_devices(sys_root: str) -> dict[str, tuple[str, str]]:
    """``major:minor`` → (name, stat path) of every disk and partition under ``<sys>/block``."""
    base = os.path.join(sys_root, "block")
    out: dict[str, tuple[str, str]] = {}
    try:
        disks = os.listdir(base)
    except OSError:
        return out
    for disk in disks:
        ddir = os.path.join(base, disk)
        for name, path in [(disk, ddir)] + _partitions(ddir, disk):
            try:
                with open(os.path.join(path, "dev")) as f:
                    out[f.read().strip()] = (name, os.path.join(path, "stat"))
            except OSError:
                continue
    return out


def _partitions(ddir: str, disk: str) -> list[tuple[str, str]]:
    try:
        return [(n, os.path.join(ddir, n)) for n in os.listdir(ddir) if n.startswith(disk)]
    except OSError:
        return []


class BlockTracker:
    """One device's totals and interval averages (queue depth, busy share, await)."""

    def __init__(self) -> None:
        self._c = [Cumulative() for _ in range(11)]
        self._last_ts: float | None = None

    def sample(self, b: BatchBuilder, entity: str, stat: tuple[int, ...], now: float) -> None:
        steps = [self._c[i].step(stat[i]) for i in range(11)]
        t = [c.total for c in self._c]
        b.add(entity, "fs.read_bytes", t[READ_SECTORS] * SECTOR)
        b.add(entity, "fs.write_bytes", t[WRITE_SECTORS] * SECTOR)
        b.add(entity, "fs.read_ops", t[READS])
        b.add(entity, "fs.write_ops", t[WRITES])
        b.add(entity, "fs.ops", t[READS] + t[WRITES])
        last, self._last_ts = self._last_ts, now
        if last is None or now <= last:
            return
        span_ms = (now - last) * 1000
        io_ms, queue_ms = steps[IO_MS], steps[QUEUE_MS]
        if io_ms is not None:
            b.add(entity, "fs.busy", min(1.0, io_ms / span_ms))
        if queue_ms is not None:
            b.add(entity, "fs.queue_depth", queue_ms / span_ms)
        ops = (steps[READS] or 0) + (steps[WRITES] or 0)
        wait = (steps[READ_MS] or 0) + (steps[WRITE_MS] or 0)
        if ops > 0:
            b.add(entity, "fs.latency", wait / ops / 1000)
