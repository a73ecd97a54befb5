"""NFS figures from ``<proc>/<pid>/mountstats``, read as ``nfsiostat`` reads them.

Per mount the kernel keeps (``fs/nfs/super.c``, ``net/sunrpc/stats.c``): ``bytes:`` normal
read/write, direct read/write, server read/write bytes and pages; and per operation ``ops
transmissions major-timeouts bytes-sent bytes-received queue-ms rtt-ms execute-ms [errors]``.
Averages are taken over the interval's deltas (``Δrtt / Δops``), retransmissions are
``transmissions - ops``; a counter that goes back (remount) restarts the delta from zero.

The file is worked on as the bytes read: each tracker finds its own section in place by the
section's ``device`` line (:func:`find_heads` cuts the whole file only when that line is not
there any more), and parses an operation's numbers only when its line changed.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress

from agent.catalog.storage import OP_PREFIX
from collectors.storage.mounts import unescape
from collectors.storage.rows import Rows, Segment, segment

#: Indexes into the ``bytes:`` line and a per-op line.
SERVER_READ, SERVER_WRITE = 4, 5
OPS, TRANS, BYTES_SENT, BYTES_RECV, RTT_MS, EXEC_MS, ERRORS = 0, 1, 3, 4, 6, 7, 8
#: Operations reported per op (the rest count only into the mount's totals).
REPORTED_OPS = frozenset(
    {"READ", "WRITE", "GETATTR", "LOOKUP", "ACCESS", "OPEN", "CLOSE", "COMMIT", "READDIR",
     "READDIRPLUS", "SETATTR", "CREATE", "REMOVE", "RENAME", "OPEN_NOATTR", "LAYOUTGET"}
)  # fmt: skip
#: A section's ``bytes:`` numbers and its per-op lines, as the file has them.
Section = tuple[bytes, bytes]


@dataclass(frozen=True)
class DeviceLine:
    """``device 10.0.0.5:/export mounted on /mnt/data with fstype nfs4 statvers=1.1``."""

    mountpoint: str
    fstype: str
    server: str
    statvers: str = ""


@dataclass
class NfsMount:
    """One ``device ... mounted on ... with fstype nfs*`` section, parsed."""

    mountpoint: str
    fstype: str
    server: str
    statvers: str = ""
    bytes: tuple[int, ...] = ()
    ops: dict[str, tuple[int, ...]] = field(default_factory=dict)


#: ``device`` lines already parsed (the same few each time the file is cut).
_HEADS: dict[bytes, DeviceLine | None] = {}


def find_heads(
    text: bytes, wanted: set[str] | frozenset[str] | None = None
) -> dict[str, tuple[bytes, DeviceLine]]:
    """Mount point → its NFS section's ``device`` line (newline included) and what it says;
    only those in ``wanted``, when given. A later mount on the same point shadows.

    Sections are cut at ``device`` lines with ``bytes.split`` (a node may list hundreds)."""
    out: dict[str, tuple[bytes, DeviceLine]] = {}
    for chunk in (b"\n" + text).split(b"\ndevice ")[1:]:
        head = chunk.partition(b"\n")[0]
        if b"fstype nfs" not in head:
            continue
        known = _HEADS.get(head)
        if known is None:
            if len(_HEADS) > 4096:  # bounded: mounts come and go
                _HEADS.clear()
            known = _HEADS[head] = _device_line(head.decode("utf-8", "replace"))
        if known is not None and (wanted is None or known.mountpoint in wanted):
            out[known.mountpoint] = (b"device " + head + b"\n", known)
    return out


def locate(text: bytes, head: bytes) -> Section | None:
    """The ``bytes:`` numbers and per-op lines of the section that starts with ``head`` (the
    last one: a later mount on the same point shadows), found in place; None if not there."""
    at = text.rfind(head)
    if at < 0 or (at and text[at - 1] != 10):  # 10: a newline
        return None
    start = at + len(head)
    end = text.find(b"\ndevice ", start)
    if end < 0:
        end = len(text)
    numbers = b""
    b = text.find(b"bytes:", start, end)
    if b >= 0:
        nl = text.find(b"\n", b, end)
        numbers = text[b + 6 : nl if nl >= 0 else end].strip()
    p = text.find(b"per-op statistics\n", start, end)
    return numbers, (text[p + 18 : end] if p >= 0 else b"")


def parse_mountstats(text: str) -> dict[str, NfsMount]:
    """Mount point → its NFS statistics; non-NFS sections are skipped."""
    data = text.encode()
    out: dict[str, NfsMount] = {}
    for point, (head, dev) in find_heads(data).items():
        numbers, block = locate(data, head) or (b"", b"")
        ops = {}
        for line in block.split(b"\n"):
            name, sep, rest = line.partition(b":")
            if sep and len(v := _ints(rest.split())) >= 8:
                ops[name.strip().decode()] = v
        out[point] = NfsMount(
            point, dev.fstype, dev.server, dev.statvers, _ints(numbers.split()), ops
        )
    return out


def _device_line(line: str) -> DeviceLine | None:
    # 10.0.0.5:/export mounted on /mnt/data with fstype nfs4 statvers=1.1 (no "device ")
    parts = line.split()
    try:
        on = parts.index("on")
        fstype = parts[parts.index("fstype") + 1]
    except (ValueError, IndexError):
        return None
    if not fstype.startswith("nfs"):
        return None
    statvers = next((p.partition("=")[2] for p in parts if p.startswith("statvers=")), "")
    return DeviceLine(unescape(parts[on + 1]), fstype, parts[0], statvers)


def _ints(fields: Iterable[bytes | str]) -> tuple[int, ...]:
    try:
        return tuple(map(int, fields))
    except ValueError:
        return ()


_add, _ge, _ne = operator.add, operator.ge, operator.ne
_OP_COUNTS = ("fs.op.count", "fs.op.retransmits", "fs.op.bytes", "fs.op.errors")
_OP_TIMES = ("fs.op.rtt", "fs.op.latency")


class _Op:
    """One operation's last reading (``raw``: ops, transmissions, bytes sent, bytes received,
    rtt ms, execute ms, errors). Its running totals are ``raw`` plus ``off`` (None: zero, as
    long as no field ever went back); a field that went back (remount) counts on from its new
    value, its last reading joining its offset.

    ``count`` and ``retrans``: its totals' ops and retransmissions as of its last reading,
    which the mount's totals are the sums of. ``slot``: where its four reported values sit in
    the tracker's flat list (-1: not reported, or not yet happened)."""

    __slots__ = ("name", "raw", "off", "plain", "count", "retrans", "slot", "times")

    def __init__(self, name: str) -> None:
        self.name = name
        self.raw: list[int] = []
        self.off: list[int] | None = None
        #: Read at least once and no field ever went back: the totals are ``raw``.
        self.plain = False
        self.count = self.retrans = 0  # its totals' ops and retransmissions
        self.slot = -1
        self.times: Segment = ((), ())


#: The fields of a per-op line used, in :class:`_Op`'s order (errors: from kernel 4.18 on).
_PICK = operator.itemgetter(OPS, TRANS, BYTES_SENT, BYTES_RECV, RTT_MS, EXEC_MS, ERRORS)
_PICK_NO_ERRORS = operator.itemgetter(OPS, TRANS, BYTES_SENT, BYTES_RECV, RTT_MS, EXEC_MS)


def _op_fields(text: bytes) -> list[int] | None:
    """The used fields of a per-op line's numbers (errors 0 where the kernel has none)."""
    f = text.split()
    try:
        return list(map(int, _PICK(f)))
    except IndexError:
        try:
            return [*map(int, _PICK_NO_ERRORS(f)), 0]
        except (IndexError, ValueError):
            return None
    except ValueError:
        return None


#: What an operation not seen before looks up as (never plain: its line takes the long way).
_UNKNOWN = _Op("")


class NfsTracker:
    """One mount's running totals and interval averages from successive readings.

    An unchanged per-op block costs one bytes compare, an unchanged operation's line one
    compare in C. Each operation keeps its totals' ops count and retransmissions, so the
    mount's totals step by a changed operation's change alone; the reported operations'
    values sit in one flat list, updated in place and handed on whole each tick.
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
        self._server = [0, 0, 0, 0]  # server read, write: last reading, total
        self._ops_total = self._retrans_total = 0
        self._lines: list[bytes] = []
        self._mount_segments: dict[tuple[bool, ...], Segment] = {}

    def locate(self, text: bytes) -> Section | None:
        """This mount's section of a whole ``mountstats`` file, found by its device line."""
        return None if self.head is None else locate(text, self.head)

    def take(self, rows: Rows, text: bytes) -> bool:
        """Take one reading from a whole ``mountstats`` file; False if this mount's section
        is not there (its device line changed or it is gone: the caller cuts the file)."""
        head = self.head
        if head is None:
            return False
        at = text.rfind(head)
        if at < 0 or (at and text[at - 1] != 10):  # 10: a newline
            return False
        start = at + len(head)
        end = text.find(b"\ndevice ", start)
        chunk = text[start:end] if end >= 0 else text[start:]
        numbers = b""
        b = chunk.find(b"bytes:")
        if b >= 0:
            nl = chunk.find(b"\n", b)
            numbers = (chunk[b + 6 : nl] if nl >= 0 else chunk[b + 6 :]).strip()
        p = chunk.find(b"per-op statistics\n")
        block = chunk[p + 18 :] if p >= 0 else b""
        self.sample(rows, (numbers, block))
        return True

    def sample(self, rows: Rows, section: Section) -> None:
        """Take one reading of the mount's section (one function: it runs once a tick)."""
        numbers, block = section
        if numbers != self._bytes_text:
            self._bytes_text = numbers
            values = _ints(numbers.split())
            if len(values) > SERVER_WRITE:  # a counter that went back counts on from its value
                server = self._server  # last read, read total, last write, write total
                read, write = values[SERVER_READ], values[SERVER_WRITE]
                server[1] += read - server[0] if read >= server[0] else read
                server[3] += write - server[2] if write >= server[2] else write
                server[0], server[2] = read, write
        d_ops = d_rtt = d_exec = 0
        timed: list[Segment] = []  # the moved reported operations' segments and averages
        timing: list[float] = []
        if block != self._block:
            self._block = block
            lines, last = block.split(b"\n"), self._lines
            self._lines = lines
            if len(lines) == len(last):  # the kernel lists a mount's operations in one order
                changed: Iterable[bytes] = compress(lines, map(_ne, lines, last))  # in C
            else:
                before = set(last)
                changed = [line for line in lines if line not in before]
            known, flat, ge = self._ops, self._op_values, _ge
            ops_total, retrans_total = self._ops_total, self._retrans_total
            for line in changed:  # a changed line is a changed reading: no compare per op
                key, sep, text = line.partition(b":")  # keyed by the name as written
                op = known.get(key, _UNKNOWN)
                try:  # the fields used, as one list (C-level map: no Python step per field)
                    cur = list(map(int, _PICK(text.split())))
                except (IndexError, ValueError):
                    cur = None
                if op.plain and cur is not None and all(map(ge, cur, base := op.raw)):
                    op.raw = tot = cur  # the common case: totals are the readings, moved on
                else:
                    found = self._reading(key, sep, text, op, cur)
                    if found is None:
                        continue
                    op, tot, cur, base = found
                n = tot[0]
                retrans = tot[1] - n
                if retrans < 0:
                    retrans = 0
                ops_total += n - op.count
                retrans_total += retrans - op.retrans
                op.count, op.retrans = n, retrans
                at = op.slot
                if at >= 0:
                    flat[at : at + 4] = (n, retrans, tot[2] + tot[3], tot[6])
                elif n and op.name in REPORTED_OPS:  # reported from its first call on
                    at = op.slot = len(flat)
                    flat += (n, retrans, tot[2] + tot[3], tot[6])
                    self._op_segments.append(segment(self._op_entity(op), _OP_COUNTS))
                d = cur[0] - base[0]
                if d > 0:
                    rtt, exe = cur[4] - base[4], cur[5] - base[5]
                    d_ops += d
                    d_rtt += rtt
                    d_exec += exe
                    if at >= 0:
                        timed.append(op.times)
                        timing += (rtt / d / 1000, exe / d / 1000)
            self._ops_total, self._retrans_total = ops_total, retrans_total
        # the mount's row
        read, write = self._read_op, self._write_op
        has_bytes = bool(self._bytes_text)
        flags = (has_bytes, read is not None, write is not None, d_ops > 0)
        seg = self._mount_segments.get(flags)
        if seg is None:
            seg = self._mount_segments[flags] = self._mount_segment(flags)
        values: list[float] = [self._server[1], self._server[3]] if has_bytes else []
        if read is not None:
            values.append(read.count)
        if write is not None:
            values.append(write.count)
        values += (self._ops_total, self._retrans_total)
        if d_ops > 0:
            values += (d_rtt / d_ops / 1000, d_exec / d_ops / 1000)
        segments = rows.segments
        segments.append(seg)
        segments += self._op_segments  # in a stable order: the columns stay the same
        values += self._op_values
        if timed:
            segments += timed
            values += timing
        rows.values += values

    def _reading(
        self, key: bytes, sep: bytes, text: bytes, op: _Op, cur: list[int] | None
    ) -> tuple[_Op, list[int], list[int], list[int]] | None:
        """A changed line off the common path: a new operation, its first reading, a line of
        eight fields, a field that went back. (op, totals, reading, base): the interval's
        steps are ``reading - base``; None: not a reading."""
        if op is _UNKNOWN:
            if not sep:
                return None
            op = self._ops[key] = self._new_op(key)
        if cur is None:
            cur = _op_fields(text)
            if cur is None:
                return None
        raw = op.raw
        op.raw = cur
        if not raw:  # the op's first reading: totals, no interval
            base = cur
        elif all(map(_ge, cur, raw)):
            base = raw
        else:  # a field went back (remount): it counts on from its new value
            op.off = [
                o + (r if c < r else 0) for o, c, r in zip(op.off or [0] * len(cur), cur, raw)
            ]
            base = [r if c >= r else 0 for c, r in zip(cur, raw)]
        op.plain = op.off is None
        tot = cur if op.plain else list(map(_add, cur, op.off))
        return op, tot, cur, base

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
