"""The block device behind a local mount: ``<sys>/block/<dev>[/<part>]/stat`` (block/stat.rst).

Fields: reads, read merges, sectors read, read ms, writes, write merges, sectors written,
write ms, in flight, io ms (busy), weighted ms in queue, then discard and flush fields.
Sectors are 512 bytes whatever the device's block size.
"""

from __future__ import annotations

import operator
import os

from collectors.storage.rows import Rows, segment

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
_TOTALS = ("fs.read_bytes", "fs.write_bytes", "fs.read_ops", "fs.write_ops", "fs.ops")


class BlockTracker:
    """One device's totals and interval averages (queue depth, busy share, await).

    A field that went back (the device was re-created) counts on from its new value.
    """

    def __init__(self, entity: str) -> None:
        self._raw: tuple[int, ...] | None = None
        self._data = b""
        self._total: list[int] = [0] * len(_FIELDS)
        self._last_ts: float | None = None
        self._first = segment(entity, _TOTALS)
        self._idle = segment(entity, (*_TOTALS, "fs.busy", "fs.queue_depth"))
        self._busy = segment(entity, (*_TOTALS, "fs.busy", "fs.queue_depth", "fs.latency"))

    def sample(self, rows: Rows, data: bytes, now: float) -> None:
        if data != self._data or self._raw is None:
            try:
                cur = list(map(int, _PICK(data.split())))
            except (IndexError, ValueError):
                return
            self._data = data
            prev, self._raw = self._raw, cur
            if prev is None:
                self._total = cur
                steps = _ZEROS
            else:
                steps = list(map(_sub, cur, prev))
                if min(steps) < 0:  # the device was re-created: count on from the new value
                    steps = [c - p if c >= p else c for c, p in zip(cur, prev)]
                self._total = list(map(_add, self._total, steps))
        else:
            steps = _ZEROS  # nothing moved: the totals stand
        last, self._last_ts = self._last_ts, now
        reads, rsec, _, writes, wsec, _, _, _ = self._total
        values: list[float] = [rsec * SECTOR, wsec * SECTOR, reads, writes, reads + writes]
        if last is None or now <= last:
            rows.segments.append(self._first)
            rows.values += values
            return
        span_ms = (now - last) * 1000
        d_reads, _, d_rms, d_writes, _, d_wms, d_io, d_queue = steps
        busy = d_io / span_ms
        ops = d_reads + d_writes
        if ops > 0:
            values += (busy if busy < 1.0 else 1.0, d_queue / span_ms, (d_rms + d_wms) / ops / 1000)
            rows.segments.append(self._busy)
        else:
            values += (busy if busy < 1.0 else 1.0, d_queue / span_ms)
            rows.segments.append(self._idle)
        rows.values += values


_PICK = operator.itemgetter(*_FIELDS)
_ZEROS = [0] * len(_FIELDS)
_add, _sub = operator.add, operator.sub
