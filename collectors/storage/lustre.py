"""Lustre client figures from ``llite.*.stats`` (what ``lctl get_param llite.*.stats`` prints).

Lustre up to 2.11 keeps them at ``/proc/fs/lustre/llite/<fsname>-<sb>/stats``; later releases
moved them to debugfs, ``/sys/kernel/debug/lustre/llite/<fsname>-<sb>/stats``, readable by
root only. Lines are ``name count samples [unit] min max sum [sumsq]``: ``read_bytes`` and
``write_bytes`` count calls and sum bytes; ``read`` / ``write`` (2.12+) sum microseconds.
"""

from __future__ import annotations

import operator
import os

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


def pick_llite(text: bytes) -> list[int | None]:
    """Per line of :data:`_LINES`, its samples and sum (None: the line or the field is absent
    or unreadable), flat; the four lines are found in place (no split of the whole file)."""
    text = b"\n" + text + b"\n"  # every line between newlines: one find per line
    find = text.find
    out: list[int | None] = []
    for key in _KEYS:
        at = find(key)
        if at < 0:
            out += _ABSENT
            continue
        f = text[at : find(b"\n", at + 1)].split()
        try:
            out += (int(f[1]), int(f[6]) if len(f) > 6 else None) if f[2] == b"samples" else _ABSENT
        except (IndexError, ValueError):
            out += _ABSENT
    return out


class LustreTracker:
    """Running totals and interval latency of one llite instance.

    An unchanged file (nothing read or written since the last tick) costs one compare. A
    counter that went back (the client was remounted) counts on from its new value.
    """

    def __init__(self, entity: str) -> None:
        self._text = b""
        self._raw: list[int] | None = None  # read_bytes, write_bytes: samples, sum
        self._values: list[int] = []  # their totals
        self._timing: list[int | None] = [None] * 4  # read, write: samples, sum (µs)
        self._totals = segment(entity, _TOTALS)
        self._timed = segment(entity, (*_TOTALS, "fs.latency"))

    def sample(self, rows: Rows, text: bytes, now: float = 0.0) -> None:
        """Take one reading of the stats file (``now`` unused: the interval is the calls')."""
        if text == self._text and self._values:
            rows.add(self._totals, self._values)  # no new calls: no interval latency
            return
        self._text = text
        rb_n, rb_sum, wb_n, wb_sum, r_n, r_us, w_n, w_us = pick_llite(text)
        # an absent line: nothing yet (Lustre omits it)
        cur = [rb_n or 0, rb_sum or 0, wb_n or 0, wb_sum or 0]
        raw, self._raw = self._raw, cur
        if raw is None:
            values = cur
        else:
            steps = list(map(_sub, cur, raw))
            if min(steps) < 0:
                steps = [c - p if c >= p else c for c, p in zip(cur, raw)]
            values = list(map(_add, self._values, steps))
        self._values = values
        # read, write: calls and µs, stepped when both are there (and were last time)
        p_rn, p_rus, p_wn, p_wus = timing = self._timing
        d_calls = d_us = 0
        have = False
        if r_n is not None and r_us is not None:
            timing[0], timing[1] = r_n, r_us
            if p_rn is not None and p_rus is not None:
                have = True
                d_calls += r_n - p_rn if r_n >= p_rn else r_n
                d_us += r_us - p_rus if r_us >= p_rus else r_us
        if w_n is not None and w_us is not None:
            timing[2], timing[3] = w_n, w_us
            if p_wn is not None and p_wus is not None:
                have = True
                d_calls += w_n - p_wn if w_n >= p_wn else w_n
                d_us += w_us - p_wus if w_us >= p_wus else w_us
        if have and d_calls > 0:
            rows.add(self._timed, [*values, d_us / d_calls / 1e6])
        else:
            rows.add(self._totals, values)


_ABSENT = (None, None)
_add, _sub = operator.add, operator.sub
