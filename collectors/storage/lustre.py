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


class LustreTracker:
    """Running totals and interval latency of one llite instance."""

    def __init__(self, entity: str) -> None:
        self._c: dict[tuple[str, int], Cumulative] = {}
        self._text = ""
        self._totals = segment(entity, _TOTALS)
        self._timed = segment(entity, (*_TOTALS, "fs.latency"))

    def _t(self, name: str, i: int, raw: int) -> tuple[int, int | None]:
        c = self._c.get((name, i))
        if c is None:
            c = self._c[(name, i)] = Cumulative()
        step = c.step(raw)
        return c.total, step

    def sample(self, rows: Rows, text: str) -> None:
        stats = parse_llite_stats(text)
        values: list[float] = []
        for name in ("read_bytes", "write_bytes"):
            count, total = stats.get(name, (0, 0))
            values += (self._t(name, 0, count)[0], self._t(name, 1, total or 0)[0])
        d_calls = d_us = 0
        have = False
        for name in ("read", "write"):
            if name in stats and stats[name][1] is not None:
                _, dc = self._t(name, 0, stats[name][0])
                _, du = self._t(name, 1, stats[name][1] or 0)
                if dc is not None and du is not None:
                    have = True
                    d_calls, d_us = d_calls + dc, d_us + du
        if have and d_calls > 0:
            values.append(d_us / d_calls / 1e6)
            rows.add(self._timed, values)
        else:
            rows.add(self._totals, values)
