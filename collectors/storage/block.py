"""The block device behind a local mount: ``<sys>/block/<dev>[/<part>]/stat`` (block/stat.rst).

Fields: reads, read merges, sectors read, read ms, writes, write merges, sectors written,
write ms, in flight, io ms (busy), weighted ms in queue, then discard and flush fields.
Sectors are 512 bytes whatever the device's block size.
"""

from __future__ import annotations

import os

from agent.model import BatchBuilder

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
        values = tuple(map(int, data.split()))
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


_FIELDS = (READS, READ_SECTORS, READ_MS, WRITES, WRITE_SECTORS, WRITE_MS, IO_MS, QUEUE_MS)


class BlockTracker:
    """One device's totals and interval averages (queue depth, busy share, await).

    A field that went back (the device was re-created) counts on from its new value.
    """

    def __init__(self) -> None:
        self._raw: tuple[int, ...] | None = None
        self._total = dict.fromkeys(_FIELDS, 0)
        self._last_ts: float | None = None

    def sample(self, b: BatchBuilder, entity: str, stat: tuple[int, ...], now: float) -> None:
        prev, self._raw = self._raw, stat
        total = self._total
        steps = dict.fromkeys(_FIELDS, 0)
        if prev is None:
            for i in _FIELDS:
                total[i] = stat[i]
        elif stat != prev:
            for i in _FIELDS:
                now_v, before = stat[i], prev[i]
                step = now_v - before if now_v >= before else now_v
                steps[i] = step
                total[i] += step
        add = b.add
        add(entity, "fs.read_bytes", total[READ_SECTORS] * SECTOR)
        add(entity, "fs.write_bytes", total[WRITE_SECTORS] * SECTOR)
        add(entity, "fs.read_ops", total[READS])
        add(entity, "fs.write_ops", total[WRITES])
        add(entity, "fs.ops", total[READS] + total[WRITES])
        last, self._last_ts = self._last_ts, now
        if prev is None or last is None or now <= last:
            return
        span_ms = (now - last) * 1000
        add(entity, "fs.busy", min(1.0, steps[IO_MS] / span_ms))
        add(entity, "fs.queue_depth", steps[QUEUE_MS] / span_ms)
        ops = steps[READS] + steps[WRITES]
        if ops > 0:
            add(entity, "fs.latency", (steps[READ_MS] + steps[WRITE_MS]) / ops / 1000)
