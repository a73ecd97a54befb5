"""Lustre client figures from ``llite.*.stats`` (what ``lctl get_param llite.*.stats`` prints).

Lustre up to 2.11 keeps them at ``/proc/fs/lustre/llite/<fsname>-<sb>/stats``; later releases
moved them to debugfs, ``/sys/kernel/debug/lustre/llite/<fsname>-<sb>/stats``, readable by
root only. Lines are ``name count samples [unit] min max sum [sumsq]``: ``read_bytes`` and
``write_bytes`` count calls and sum bytes; ``read`` / ``write`` (2.12+) sum microseconds.
"""

from __future__ import annotations

import os

from collectors.fabric.counters import Cumulative
from collectors.storage.rows import Rows, segment

#: Where the llite instance directories may be, relative to the proc and sys roots.
PROC_DIRS = (("fs", "lustre", "llite"),)
SYS_DIRS = (("kernel", "debug", "lustre", "llite"), ("fs", "lustre", "llite"))


def parse_llite_stats(text: str) -> dict[str, tuple[int, int | None]]:
    """Name → (samples, sum or None): ``read_bytes 17 samples [bytes] 0 1048576 2097152``."""
    out: dict[str, tuple[int, int | None]] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 3 or f[2] != "samples":
            continue
        try:
            count = int(f[1])
            total = int(f[6]) if len(f) > 6 else None
        except ValueError:
            continue
        out[f[0]] = (count, total)
    return out


def fsname_of(source: str) -> str:
    """``10.0.0.1@o2ib:10.0.0.2@o2ib:/scratch`` → ``scratch``."""
    return source.rpartition(":/")[2].strip("/").split("/")[0]


def find_stats(proc_root: str, sys_root: str, fsname: str) -> tuple[str | None, list[str]]:
    """The readable stats file of ``fsname``'s llite instance, and the places looked at."""
    looked: list[str] = []
    candidates = [os.path.join(proc_root, *p) for p in PROC_DIRS]
    candidates += [os.path.join(sys_root, *p) for p in SYS_DIRS]
    for base in candidates:
        looked.append(base)
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            if name.rpartition("-")[0] == fsname or name == fsname:
                path = os.path.join(base, name, "stats")
                if os.access(path, os.R_OK):
                    return path, looked
    return None, looked


_TOTALS = ("fs.read_ops", "fs.read_bytes", "fs.write_ops", "fs.write_bytes")


#: The lines the tracker reads, in its order (``read``/``write`` hold their time in µs).
_LINES = ("read_bytes", "write_bytes", "read", "write")
_KEYS = tuple(b"\n" + n.encode() + b" " for n in _LINES)


def pick_llite(text: bytes) -> list[tuple[int, int | None] | None]:
    """Per line of :data:`_LINES`, (samples, sum or None), or None when absent; the four
    lines are found in place (no split of the whole file)."""
    out: list[tuple[int, int | None] | None] = []
    for key in _KEYS:
        at = 0 if text.startswith(key[1:]) else text.find(key)
        if at < 0:
            out.append(None)
            continue
        end = text.find(b"\n", at + 1)
        f = text[at : end if end >= 0 else len(text)].split()
        if len(f) < 3 or f[2] != b"samples":
            out.append(None)
            continue
        try:
            out.append((int(f[1]), int(f[6]) if len(f) > 6 else None))
        except ValueError:
            out.append(None)
    return out


class LustreTracker:
    """Running totals and interval latency of one llite instance.

    An unchanged file (nothing read or written since the last tick) costs one compare.
    """

    def __init__(self, entity: str) -> None:
        # (line, field) → counter: read_bytes, write_bytes, read, write; samples then sum
        self._c = [(Cumulative(), Cumulative()) for _ in _LINES]
        self._text = b""
        self._values: list[float] = []
        self._totals = segment(entity, _TOTALS)
        self._timed = segment(entity, (*_TOTALS, "fs.latency"))

    def sample(self, rows: Rows, text: bytes, now: float = 0.0) -> None:
        """Take one reading of the stats file (``now`` unused: the interval is the calls')."""
        if text == self._text and self._values:
            rows.add(self._totals, self._values)  # no new calls: no interval latency
            return
        self._text = text
        found = pick_llite(text)
        values: list[float] = []
        for i in (0, 1):
            count, total = found[i] or (0, 0)
            counts, sums = self._c[i]
            values += (counts.advance(count), sums.advance(total or 0))
        self._values = values
        d_calls = d_us = 0
        have = False
        for i in (2, 3):
            line = found[i]
            if line is not None and line[1] is not None:
                counts, sums = self._c[i]
                dc, du = counts.step(line[0]), sums.step(line[1])
                if dc is not None and du is not None:
                    have = True
                    d_calls, d_us = d_calls + dc, d_us + du
        if have and d_calls > 0:
            rows.add(self._timed, [*values, d_us / d_calls / 1e6])
        else:
            rows.add(self._totals, values)
