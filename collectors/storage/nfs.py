"""NFS figures from ``<proc>/<pid>/mountstats``, read as ``nfsiostat`` reads them.

Per mount the kernel keeps (``fs/nfs/super.c``, ``net/sunrpc/stats.c``): ``bytes:`` normal
read/write, direct read/write, server read/write bytes and pages; and per operation ``ops
transmissions major-timeouts bytes-sent bytes-received queue-ms rtt-ms execute-ms [errors]``.
Averages are taken over the interval's deltas (``Δrtt / Δops``), retransmissions are
``transmissions - ops``; a counter that goes back (remount) restarts the delta from zero.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress

from agent.catalog.storage import OP_PREFIX
from collectors.fabric.counters import Cumulative
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


@dataclass
class NfsSection:
    """One NFS mount's section as text: the ``bytes:`` fields and the per-op lines, unparsed.

    The tracker parses an op's numbers only when its line changed since the last tick: on a
    big client most of the sixty-odd NFSv4 operations never move.
    """

    mountpoint: str
    fstype: str
    server: str
    statvers: str = ""
    bytes_text: str = ""
    op_lines: list[str] = field(default_factory=list)
    #: The section's ``device`` line, newline included (:func:`cut_sections` finds it by it).
    head: str = ""

    def op_text(self) -> dict[str, str]:
        """Operation name → its numbers as text."""
        out = {}
        for line in self.op_lines:
            name, sep, rest = line.partition(":")
            if sep:
                out[name.strip()] = rest
        return out


@dataclass
class NfsMount:
    """One ``device ... mounted on ... with fstype nfs*`` section, parsed."""

    mountpoint: str
    fstype: str
    server: str
    statvers: str = ""
    bytes: tuple[int, ...] = ()
    ops: dict[str, tuple[int, ...]] = field(default_factory=dict)


#: ``device`` lines already parsed (the same few each tick).
_HEADS: dict[str, NfsSection | None] = {}


def split_mountstats(
    text: str, wanted: set[str] | frozenset[str] | None = None
) -> dict[str, NfsSection]:
    """Mount point → its NFS section (only those in ``wanted``, when given).

    Sections are cut at ``device`` lines with ``str.split``; only the lines of wanted NFS
    sections are looked at one by one (a node may list hundreds of mounts).
    """
    out: dict[str, NfsSection] = {}
    for chunk in ("\n" + text).split("\ndevice ")[1:]:
        head, _, body = chunk.partition("\n")
        if "fstype nfs" not in head:
            continue
        known = _HEADS.get(head)
        if known is None:
            known = _HEADS[head] = _device_line("device " + head)
            if len(_HEADS) > 4096:  # bounded: mounts come and go
                _HEADS.clear()
        sec = None if known is None else NfsSection(known.mountpoint, known.fstype,
                                                    known.server, known.statvers)  # fmt: skip
        if sec is None or (wanted is not None and sec.mountpoint not in wanted):
            continue
        out[sec.mountpoint] = sec
        sec.head = "device " + head + "\n"
        sec.bytes_text, sec.op_lines = _body_parts(body)
    return out


def _body_parts(body: str) -> tuple[str, list[str]]:
    """A section's ``bytes:`` numbers (text) and its per-op lines."""
    bytes_text, op_lines = "", []
    at = body.find("bytes:")
    if at >= 0:
        bytes_text = body[at + 6 : body.find("\n", at)].strip()
    at = body.find("per-op statistics\n")
    if at >= 0:
        op_lines = body[at + 18 :].rstrip("\n").split("\n")
    return bytes_text, op_lines


def cut_sections(text: str, heads: dict[str, str]) -> dict[str, NfsSection] | None:
    """Mount point → its section, found by the ``device`` line it had (``heads``: mount point
    → that line, as :func:`split_mountstats` saw it), without cutting the rest of the file;
    None if one of them is not there any more (remounted: split again)."""
    out: dict[str, NfsSection] = {}
    for point, head in heads.items():
        at = text.rfind(head)  # the last: a later mount on the same point shadows
        if at < 0 or (at and text[at - 1] != "\n"):
            return None
        end = text.find("\ndevice ", at + len(head))
        sec = _HEADS.get(head[7:-1]) if head.startswith("device ") else None
        if sec is None:
            return None
        found = out[point] = NfsSection(sec.mountpoint, sec.fstype, sec.server, sec.statvers)
        start, end = at + len(head), end if end >= 0 else len(text)
        b = text.find("bytes:", start, end)  # found in place: no copy of the section
        if b >= 0:
            nl = text.find("\n", b, end)
            found.bytes_text = text[b + 6 : nl if nl >= 0 else end].strip()
        p = text.find("per-op statistics\n", start, end)
        if p >= 0:
            found.op_lines = text[p + 18 : end].rstrip("\n").split("\n")
    return out


def parse_mountstats(text: str) -> dict[str, NfsMount]:
    """Mount point → its NFS statistics; non-NFS sections are skipped."""
    out: dict[str, NfsMount] = {}
    for point, sec in split_mountstats(text).items():
        ops = {n: v for n, t in sec.op_text().items() if len(v := _ints(t.split())) >= 8}
        out[point] = NfsMount(
            point, sec.fstype, sec.server, sec.statvers, _ints(sec.bytes_text.split()), ops
        )
    return out


def _device_line(line: str) -> NfsSection | None:
    # device 10.0.0.5:/export mounted on /mnt/data with fstype nfs4 statvers=1.1
    parts = line.split()
    try:
        on = parts.index("on")
        fstype = parts[parts.index("fstype") + 1]
    except (ValueError, IndexError):
        return None
    if not fstype.startswith("nfs"):
        return None
    statvers = next((p.partition("=")[2] for p in parts if p.startswith("statvers=")), "")
    return NfsSection(unescape(parts[on + 1]), fstype, parts[1], statvers)


def _ints(fields: list[str]) -> tuple[int, ...]:
    try:
        return tuple(map(int, fields))
    except ValueError:
        return ()


_add, _ne = operator.add, operator.ne
_OP_COUNTS = ("fs.op.count", "fs.op.retransmits", "fs.op.bytes", "fs.op.errors")
_OP_TIMES = ("fs.op.rtt", "fs.op.latency")


class _Op:
    """One operation's last reading and running totals: ops, transmissions, rtt ms, execute
    ms, bytes (sent + received), errors. A field that went back counts on from its new value."""

    __slots__ = ("name", "entity", "text", "prev", "tot", "retrans", "reported", "counts",
                 "times", "values", "moved")  # fmt: skip

    def __init__(self, name: str, mountpoint: str) -> None:
        self.name = name
        self.entity = f"{OP_PREFIX}{name}@{mountpoint}"
        self.text = ""
        self.prev: tuple[int, ...] | None = None
        self.tot = [0, 0, 0, 0, 0, 0]
        self.retrans = 0
        self.reported = False
        self.counts = segment(self.entity, _OP_COUNTS)
        self.times = segment(self.entity, _OP_TIMES)
        self.values: list[float] = []  # count, retransmits, bytes, errors
        self.moved: tuple[float, float] | None = None  # this tick's average rtt, execute time


class NfsTracker:
    """One mount's running totals and interval averages from successive readings.

    An operation whose text did not change since the last tick costs one string compare; the
    mount's totals are kept as running sums of the changed operations' steps, and each
    operation's reported values are kept as a list, handed on as they are.
    """

    def __init__(self, entity: str, mountpoint: str) -> None:
        self.entity, self.mountpoint = entity, mountpoint
        self._ops: dict[str, _Op] = {}  # by the name as the line writes it (padded)
        self._named: dict[str, _Op] = {}  # by the name
        self._reported: list[_Op] = []  # reported operations that have happened
        self._bytes_text = ""
        self._read, self._write = Cumulative(), Cumulative()
        self._ops_total = self._retrans_total = 0
        self._lines: list[str] = []
        self._mount_segments: dict[tuple[bool, ...], Segment] = {}

    def sample(self, rows: Rows, sec: NfsSection) -> None:
        if sec.bytes_text != self._bytes_text:
            self._bytes_text = sec.bytes_text
            values = _ints(sec.bytes_text.split())
            if len(values) > SERVER_WRITE:
                self._read.advance(values[SERVER_READ])
                self._write.advance(values[SERVER_WRITE])
        d_ops = d_rtt = d_exec = 0
        known = self._ops
        lines, last = sec.op_lines, self._lines
        if len(lines) == len(last):  # the kernel lists a mount's operations in one order
            changed: Iterable[str] = compress(lines, map(_ne, lines, last))  # in C
        else:
            changed = set(lines).difference(last)
        self._lines = lines
        moved_ops = []
        for line in changed:
            key, sep, text = line.partition(":")  # keyed by the name as written: no strip
            if not sep:
                continue
            op = known.get(key)
            if op is None:
                op = known[key] = self._named[key.strip()] = _Op(key.strip(), self.mountpoint)
            elif text == op.text:
                continue
            op.text = text
            f = text.split()
            try:  # the fields used, parsed one by one (no list of all nine)
                ops_n, trans = int(f[OPS]), int(f[TRANS])
                rtt, exe = int(f[RTT_MS]), int(f[EXEC_MS])
                moved_b = int(f[BYTES_SENT]) + int(f[BYTES_RECV])
                errors = int(f[ERRORS]) if len(f) > ERRORS else 0  # none before 4.18
            except (ValueError, IndexError):
                continue
            prev, tot = op.prev, op.tot
            op.prev = (ops_n, trans, rtt, exe, moved_b, errors)
            if prev is None:  # the op's first reading: totals, no interval
                tot[:] = op.prev
                op_d = rtt_d = exec_d = 0
                self._ops_total += ops_n
            else:
                p_ops, p_trans, p_rtt, p_exe, p_b, p_err = prev
                if (ops_n >= p_ops and trans >= p_trans and rtt >= p_rtt and exe >= p_exe
                        and moved_b >= p_b and errors >= p_err):  # fmt: skip
                    op_d, rtt_d, exec_d = ops_n - p_ops, rtt - p_rtt, exe - p_exe
                    tot[0] += op_d
                    tot[1] += trans - p_trans
                    tot[2] += rtt_d
                    tot[3] += exec_d
                    tot[4] += moved_b - p_b
                    tot[5] += errors - p_err
                else:  # a field went back (remount): count on from its value
                    steps = [c - p if c >= p else c for c, p in zip(op.prev, prev)]
                    tot[:] = map(_add, tot, steps)
                    op_d, rtt_d, exec_d = steps[0], steps[2], steps[3]
                self._ops_total += op_d
            retrans = tot[1] - tot[0]
            if retrans < 0:
                retrans = 0
            self._retrans_total += retrans - op.retrans
            op.retrans = retrans
            op.values = [tot[0], retrans, tot[4], tot[5]]
            if not op.reported and tot[0] and op.name in REPORTED_OPS:
                op.reported = True
                self._reported.append(op)
            if op_d > 0:
                d_ops, d_rtt, d_exec = d_ops + op_d, d_rtt + rtt_d, d_exec + exec_d
                op.moved = (rtt_d / op_d / 1000, exec_d / op_d / 1000)
                moved_ops.append(op)
        self._mount(rows, d_ops, d_rtt, d_exec)
        for op in self._reported:  # in a stable order: the columns stay the same lists
            rows.add(op.counts, op.values)
        if moved_ops:
            for op in self._reported:
                if op.moved is not None:
                    rows.add(op.times, op.moved)
            for op in moved_ops:
                op.moved = None

    def _mount(self, rows: Rows, d_ops: int, d_rtt: int, d_exec: int) -> None:
        read, write = self._named.get("READ"), self._named.get("WRITE")
        flags = (bool(self._bytes_text), read is not None, write is not None, d_ops > 0)
        seg = self._mount_segments.get(flags)
        if seg is None:
            names = [*(("fs.read_bytes", "fs.write_bytes") if flags[0] else ()),
                     *(("fs.read_ops",) if flags[1] else ()),
                     *(("fs.write_ops",) if flags[2] else ()), "fs.ops", "fs.retransmits",
                     *(("fs.rtt", "fs.latency") if flags[3] else ())]  # fmt: skip
            seg = self._mount_segments[flags] = segment(self.entity, names)
        values: list[float] = []
        if flags[0]:
            values += (self._read.total, self._write.total)
        if read is not None:
            values.append(read.tot[0])
        if write is not None:
            values.append(write.tot[0])
        values += (self._ops_total, self._retrans_total)
        if d_ops > 0:
            values += (d_rtt / d_ops / 1000, d_exec / d_ops / 1000)
        rows.add(seg, values)
