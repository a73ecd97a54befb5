"""NFS figures from ``<proc>/<pid>/mountstats``, read as ``nfsiostat`` reads them.

Per mount the kernel keeps (``fs/nfs/super.c``, ``net/sunrpc/stats.c``): ``bytes:`` normal
read/write, direct read/write, server read/write bytes and pages; and per operation ``ops
transmissions major-timeouts bytes-sent bytes-received queue-ms rtt-ms execute-ms [errors]``.
Averages are taken over the interval's deltas (``Δrtt / Δops``), retransmissions are
``transmissions - ops``; a counter that goes back (remount) restarts the delta from zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.catalog.storage import OP_PREFIX
from agent.model import BatchBuilder
from collectors.fabric.counters import Cumulative
from collectors.storage.mounts import unescape

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
        at = body.find("bytes:")
        if at >= 0:
            sec.bytes_text = body[at + 6 : body.find("\n", at)].strip()
        at = body.find("per-op statistics\n")
        if at >= 0:
            sec.op_lines = body[at + 18 :].rstrip("\n").split("\n")
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


class _Op:
    """One operation's last reading and running totals: ops, transmissions, rtt ms, execute
    ms, bytes (sent + received), errors. A field that went back counts on from its new value."""

    __slots__ = ("name", "entity", "text", "prev", "tot", "retrans", "reported")

    def __init__(self, name: str, mountpoint: str) -> None:
        self.name = name
        self.entity = f"{OP_PREFIX}{name}@{mountpoint}"
        self.text = ""
        self.prev: tuple[int, ...] | None = None
        self.tot = [0, 0, 0, 0, 0, 0]
        self.retrans = 0
        self.reported = False


class NfsTracker:
    """One mount's running totals and interval averages from successive readings.

    An operation whose text did not change since the last tick costs one string compare;
    the mount's totals are kept as running sums of the changed operations' steps.
    """

    def __init__(self) -> None:
        self._ops: dict[str, _Op] = {}
        self._reported: list[_Op] = []  # reported operations that have happened
        self._bytes_text = ""
        self._read, self._write = Cumulative(), Cumulative()
        self._ops_total = self._retrans_total = 0
        self._lines: set[str] = set()

    def sample(self, b: BatchBuilder, entity: str, mountpoint: str, sec: NfsSection) -> None:
        add = b.add
        if sec.bytes_text != self._bytes_text:
            self._bytes_text = sec.bytes_text
            values = _ints(sec.bytes_text.split())
            if len(values) > SERVER_WRITE:
                self._read.advance(values[SERVER_READ])
                self._write.advance(values[SERVER_WRITE])
        if self._bytes_text:
            add(entity, "fs.read_bytes", self._read.total)
            add(entity, "fs.write_bytes", self._write.total)
        d_ops = d_rtt = d_exec = 0
        averages: list[tuple[_Op, int, int, int]] = []
        known = self._ops
        lines = set(sec.op_lines)
        changed = lines.difference(self._lines)  # in C: most lines are as they were
        self._lines = lines
        for line in changed:
            name, sep, text = line.partition(":")
            if not sep:
                continue
            name = name.strip()
            op = known.get(name)
            if op is None:
                op = known[name] = _Op(name, mountpoint)
            elif text == op.text:
                continue
            op.text = text
            v = _ints(text.split())
            if len(v) < 8:
                continue
            cur = (v[OPS], v[TRANS], v[RTT_MS], v[EXEC_MS], v[BYTES_SENT] + v[BYTES_RECV],
                   v[ERRORS] if len(v) > ERRORS else 0)  # fmt: skip
            prev, op.prev, tot = op.prev, cur, op.tot
            if prev is None:  # the op's first reading: totals, no interval
                tot[:] = cur
                op_d = rtt_d = exec_d = 0
                self._ops_total += cur[0]
            else:
                steps = [c - p if c >= p else c for c, p in zip(cur, prev)]
                for i, step in enumerate(steps):
                    tot[i] += step
                op_d, rtt_d, exec_d = steps[0], steps[2], steps[3]
                self._ops_total += op_d
            retrans = max(0, tot[1] - tot[0])
            self._retrans_total += retrans - op.retrans
            op.retrans = retrans
            if not op.reported and tot[0] and name in REPORTED_OPS:
                op.reported = True
                self._reported.append(op)
            if op_d > 0:
                d_ops, d_rtt, d_exec = d_ops + op_d, d_rtt + rtt_d, d_exec + exec_d
                averages.append((op, op_d, rtt_d, exec_d))
        for name, metric in (("READ", "fs.read_ops"), ("WRITE", "fs.write_ops")):
            op = known.get(name)
            if op is not None:
                add(entity, metric, op.tot[0])
        for op in self._reported:
            e = op.entity
            tot = op.tot
            add(e, "fs.op.count", tot[0])
            add(e, "fs.op.retransmits", op.retrans)
            add(e, "fs.op.bytes", tot[4])
            add(e, "fs.op.errors", tot[5])
        for op, op_d, rtt_d, exec_d in averages:
            if op.reported:
                add(op.entity, "fs.op.rtt", rtt_d / op_d / 1000)
                add(op.entity, "fs.op.latency", exec_d / op_d / 1000)
        add(entity, "fs.ops", self._ops_total)
        add(entity, "fs.retransmits", self._retrans_total)
        if d_ops > 0:
            add(entity, "fs.rtt", d_rtt / d_ops / 1000)
            add(entity, "fs.latency", d_exec / d_ops / 1000)
