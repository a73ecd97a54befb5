"""The storage trackers as they were before the cold-cache pass (Dec 2026), kept unchanged as
the reference the randomized replays compare the current trackers with."""

# ruff: noqa
# fmt: off
from __future__ import annotations

import operator
from collections.abc import Iterable
from itertools import compress

from agent.catalog.storage import OP_PREFIX
from collectors.fabric.counters import Cumulative
from collectors.storage.nfs import (
    REPORTED_OPS, SERVER_READ, SERVER_WRITE, Section, _ints, _op_fields, locate,
)
from collectors.storage.rows import Rows, Segment, segment

_add, _ge, _ne, _sub = operator.add, operator.ge, operator.ne, operator.sub
_OP_COUNTS = ("fs.op.count", "fs.op.retransmits", "fs.op.bytes", "fs.op.errors")
_OP_TIMES = ("fs.op.rtt", "fs.op.latency")
OPS, TRANS, BYTES_SENT, BYTES_RECV, RTT_MS, EXEC_MS, ERRORS = 0, 1, 3, 4, 6, 7, 8

class _Op:
    """One operation's last reading (``raw``: ops, transmissions, bytes sent, bytes received,
    rtt ms, execute ms, errors). Its running totals are ``raw`` plus ``off`` (None: zero, as
    long as no field ever went back); a field that went back (remount) counts on from its new
    value, its last reading joining its offset.

    ``slot``: where its four reported values sit in the tracker's flat list (-1: not
    reported, or not yet happened)."""

    __slots__ = ("name", "raw", "off", "retrans", "slot", "times")

    def __init__(self, name: str) -> None:
        self.name = name
        self.raw: list[int] = []
        self.off: list[int] | None = None
        self.retrans = 0
        self.slot = -1
        self.times: Segment = ((), ())


_PICK = operator.itemgetter(OPS, TRANS, BYTES_SENT, BYTES_RECV, RTT_MS, EXEC_MS, ERRORS)
_PICK_NO_ERRORS = operator.itemgetter(OPS, TRANS, BYTES_SENT, BYTES_RECV, RTT_MS, EXEC_MS)


class NfsTracker:
    """One mount's running totals and interval averages from successive readings.

    An unchanged per-op block costs one bytes compare, an unchanged operation's line one
    compare in C; the mount's totals are running sums of the changed operations' steps, and
    the reported operations' values sit in one flat list, updated in place and handed on
    whole (with their segments) each tick.
    """

    def __init__(self, entity: str, mountpoint: str) -> None:
        self.entity, self.mountpoint = entity, mountpoint
        #: The section's ``device`` line in mountstats (None: to be found by a cut).
        self.head: bytes | None = None
        self._ops: dict[bytes, _Op] = {}  # by the name as the line writes it (padded)
        self._read_op: _Op | None = None
        self._write_op: _Op | None = None
        self._op_values: list[float] = []  # count, retransmits, bytes, errors per reported op
        self._op_segments: list[Segment] = []
        self._bytes_text = b""
        self._block = b""
        self._read, self._write = Cumulative(), Cumulative()
        self._ops_total = self._retrans_total = 0
        self._lines: list[bytes] = []
        self._mount_segments: dict[tuple[bool, ...], Segment] = {}

    def locate(self, text: bytes) -> Section | None:
        """This mount's section of a whole ``mountstats`` file, found by its device line."""
        return None if self.head is None else locate(text, self.head)

    def sample(self, rows: Rows, section: Section) -> None:
        """Take one reading of the mount's section (one function: it runs once a tick)."""
        numbers, block = section
        if numbers != self._bytes_text:
            self._bytes_text = numbers
            values = _ints(numbers.split())
            if len(values) > SERVER_WRITE:
                self._read.advance(values[SERVER_READ])
                self._write.advance(values[SERVER_WRITE])
        d_ops = d_rtt = d_exec = 0
        times: list[tuple[int, Segment, float, float]] = []  # moved reported ops: slot, ...
        if block != self._block:
            self._block = block
            lines, last = block.split(b"\n"), self._lines
            self._lines = lines
            if len(lines) == len(last):  # the kernel lists a mount's operations in one order
                changed: Iterable[bytes] = compress(lines, map(_ne, lines, last))  # in C
            else:
                before = set(last)
                changed = [line for line in lines if line not in before]
            known, flat = self._ops, self._op_values
            ops_total, retrans_total = self._ops_total, self._retrans_total
            for line in changed:  # a changed line is a changed reading: no compare per op
                key, sep, text = line.partition(b":")  # keyed by the name as written
                op = known.get(key)
                if op is None:
                    if not sep:
                        continue
                    op = known[key] = self._new_op(key)
                try:  # the fields used, as one list (C-level map: no Python step per field)
                    cur = list(map(int, _PICK(text.split())))
                except (IndexError, ValueError):
                    found = _op_fields(text)
                    if found is None:
                        continue
                    cur = found
                raw = op.raw
                op.raw = cur
                if not raw:  # the op's first reading: totals, no interval
                    op_d = rtt_d = exec_d = 0
                    ops_total += cur[0]
                elif all(map(_ge, cur, raw)):
                    op_d, rtt_d, exec_d = cur[0] - raw[0], cur[4] - raw[4], cur[5] - raw[5]
                else:  # a field went back (remount): it counts on from its new value
                    op_d, rtt_d, exec_d = _went_back(op, cur, raw)
                if op.off is not None:
                    cur = list(map(_add, cur, op.off))  # the totals
                ops_total += op_d
                count = cur[0]
                retrans = cur[1] - count
                if retrans < 0:
                    retrans = 0
                retrans_total += retrans - op.retrans
                op.retrans = retrans
                at = op.slot
                if at >= 0:
                    flat[at : at + 4] = (count, retrans, cur[2] + cur[3], cur[6])
                elif count and op.name in REPORTED_OPS:  # reported from its first call on
                    at = op.slot = len(flat)
                    flat += (count, retrans, cur[2] + cur[3], cur[6])
                    self._op_segments.append(segment(self._op_entity(op), _OP_COUNTS))
                if op_d > 0:
                    d_ops += op_d
                    d_rtt += rtt_d
                    d_exec += exec_d
                    if at >= 0:
                        times.append((at, op.times, rtt_d / op_d / 1000, exec_d / op_d / 1000))
            self._ops_total, self._retrans_total = ops_total, retrans_total
        # the mount's row
        read, write = self._read_op, self._write_op
        flags = (bool(self._bytes_text), read is not None, write is not None, d_ops > 0)
        seg = self._mount_segments.get(flags)
        if seg is None:
            seg = self._mount_segments[flags] = self._mount_segment(flags)
        values: list[float] = [self._read.total, self._write.total] if flags[0] else []
        if read is not None:
            values.append(_total(read, 0))
        if write is not None:
            values.append(_total(write, 0))
        values += (self._ops_total, self._retrans_total)
        if d_ops > 0:
            values += (d_rtt / d_ops / 1000, d_exec / d_ops / 1000)
        segments = rows.segments
        segments.append(seg)
        segments += self._op_segments  # in a stable order: the columns stay the same
        values += self._op_values
        if times:
            times.sort()
            for _, times_seg, rtt_avg, exec_avg in times:
                segments.append(times_seg)
                values += (rtt_avg, exec_avg)
        rows.values += values

    def _mount_segment(self, flags: tuple[bool, ...]) -> Segment:
        names = [*(("fs.read_bytes", "fs.write_bytes") if flags[0] else ()),
                 *(("fs.read_ops",) if flags[1] else ()),
                 *(("fs.write_ops",) if flags[2] else ()), "fs.ops", "fs.retransmits",
                 *(("fs.rtt", "fs.latency") if flags[3] else ())]  # fmt: skip
        return segment(self.entity, names)

    def _new_op(self, key: bytes) -> _Op:
        op = _Op(key.strip().decode("utf-8", "replace"))
        op.times = segment(self._op_entity(op), _OP_TIMES)
        if op.name == "READ":
            self._read_op = op
        elif op.name == "WRITE":
            self._write_op = op
        return op

    def _op_entity(self, op: _Op) -> str:
        return f"{OP_PREFIX}{op.name}@{self.mountpoint}"


def _total(op: _Op, i: int) -> int:
    """Field ``i``'s running total (0 before a reading)."""
    if not op.raw:
        return 0
    return op.raw[i] if op.off is None else op.raw[i] + op.off[i]


def _step(cur: list[int], raw: list[int], i: int) -> int:
    """Field ``i``'s step (its new value if it went back)."""
    c = cur[i]
    return c - raw[i] if c >= raw[i] else c


def _went_back(op: _Op, cur: list[int], raw: list[int]) -> tuple[int, int, int]:
    """A field went back: its last reading joins its offset (the total counts on from the new
    value). The steps of ops, rtt and execute time."""
    op.off = [o + (r if c < r else 0) for o, c, r in zip(op.off or [0] * len(cur), cur, raw)]
    return _step(cur, raw, 0), _step(cur, raw, 4), _step(cur, raw, 5)


_LUSTRE_TOTALS = ("fs.read_ops", "fs.read_bytes", "fs.write_ops", "fs.write_bytes")


#: The lines the tracker reads, in its order (``read``/``write`` hold their time in µs).
_LINES = ("read_bytes", "write_bytes", "read", "write")
_KEYS = tuple(b"\n" + n.encode() + b" " for n in _LINES)


def pick_llite(text: bytes) -> list[int | None]:
    """Per line of :data:`_LINES`, its samples and sum (None: the line or the field is absent
    or unreadable), flat; the four lines are found in place (no split of the whole file)."""
    out: list[int | None] = []
    for key in _KEYS:
        at = 0 if text.startswith(key[1:]) else text.find(key)
        if at < 0:
            out += (None, None)
            continue
        end = text.find(b"\n", at + 1)
        f = text[at : end if end >= 0 else len(text)].split()
        try:
            if len(f) < 3 or f[2] != b"samples":
                raise ValueError
            out += (int(f[1]), int(f[6]) if len(f) > 6 else None)
        except ValueError:
            out += (None, None)
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
        self._totals = segment(entity, _LUSTRE_TOTALS)
        self._timed = segment(entity, (*_LUSTRE_TOTALS, "fs.latency"))

    def sample(self, rows: Rows, text: bytes, now: float = 0.0) -> None:
        """Take one reading of the stats file (``now`` unused: the interval is the calls')."""
        if text == self._text and self._values:
            rows.add(self._totals, self._values)  # no new calls: no interval latency
            return
        self._text = text
        found = pick_llite(text)
        cur = [v or 0 for v in found[:4]]  # an absent line: nothing yet (Lustre omits it)
        raw, self._raw = self._raw, cur
        if raw is None:
            values = cur
        else:
            steps = [c - p if c >= p else c for c, p in zip(cur, raw)]
            values = list(map(_add, self._values, steps))
        self._values = values
        d_calls = d_us = 0
        have = False
        timing = self._timing
        for j in (0, 2):  # read, write: calls and µs, stepped when both are there
            calls, us = found[4 + j], found[5 + j]
            if calls is None or us is None:
                continue
            p_calls, p_us = timing[j], timing[j + 1]
            timing[j], timing[j + 1] = calls, us
            if p_calls is None or p_us is None:
                continue
            have = True
            d_calls += calls - p_calls if calls >= p_calls else calls
            d_us += us - p_us if us >= p_us else us
        if have and d_calls > 0:
            rows.add(self._timed, [*values, d_us / d_calls / 1e6])
        else:
            rows.add(self._totals, values)



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
        if data == self._data and self._raw is not None:
            steps: list[int] = _BLOCK_ZEROS  # nothing moved: the totals stand
        else:
            try:
                cur = tuple(map(int, _BLOCK_PICK(data.split())))
            except (IndexError, ValueError):
                return
            self._data = data
            prev, self._raw = self._raw, cur
            if prev is None:
                self._total = list(cur)
                steps = _BLOCK_ZEROS
            else:
                steps = list(map(_sub, cur, prev))
                if min(steps) < 0:  # the device was re-created: count on from the new value
                    steps = [c - p if c >= p else c for c, p in zip(cur, prev)]
                self._total = list(map(_add, self._total, steps))
        first = self._last_ts is None
        last, self._last_ts = self._last_ts, now
        reads, rsec, _, writes, wsec, _, _, _ = self._total
        values: list[float] = [rsec * SECTOR, wsec * SECTOR, reads, writes, reads + writes]
        if first or last is None or now <= last:
            rows.add(self._first, values)
            return
        span_ms = (now - last) * 1000
        d_reads, _, d_rms, d_writes, _, d_wms, d_io, d_queue = steps
        values += (min(1.0, d_io / span_ms), d_queue / span_ms)
        ops = d_reads + d_writes
        if ops > 0:
            values.append((d_rms + d_wms) / ops / 1000)
            rows.add(self._busy, values)
        else:
            rows.add(self._idle, values)


_BLOCK_PICK = operator.itemgetter(*_FIELDS)
_BLOCK_ZEROS = [0] * len(_FIELDS)
