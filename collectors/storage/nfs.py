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
class NfsMount:
    """One ``device ... mounted on ... with fstype nfs*`` section."""

    mountpoint: str
    fstype: str
    server: str
    statvers: str = ""
    bytes: tuple[int, ...] = ()
    ops: dict[str, tuple[int, ...]] = field(default_factory=dict)


def parse_mountstats(text: str) -> dict[str, NfsMount]:
    """Mount point → its NFS statistics; non-NFS sections are skipped."""
    out: dict[str, NfsMount] = {}
    current: NfsMount | None = None
    in_ops = False
    for line in text.splitlines():
        if line.startswith("device "):
            current, in_ops = _device_line(line), False
            if current is not None:
                out[current.mountpoint] = current
            continue
        if current is None:
            continue
        stripped = line.strip()
        if stripped.startswith("bytes:"):
            current.bytes = _ints(stripped[6:].split())
        elif stripped == "per-op statistics":
            in_ops = True
        elif in_ops and ":" in stripped:
            name, _, rest = stripped.partition(":")
            values = _ints(rest.split())
            if len(values) >= 8:
                current.ops[name] = values
    return out


def _device_line(line: str) -> NfsMount | None:
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
    return NfsMount(unescape(parts[on + 1]), fstype, parts[1], statvers)


def _ints(fields: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(f) for f in fields)
    except ValueError:
        return ()


class NfsTracker:
    """One mount's running totals and interval averages from successive readings."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, int], Cumulative] = {}

    def _total(self, key: tuple[str, int], raw: int) -> tuple[int, int | None]:
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = Cumulative()
        step = c.step(raw)
        return c.total, step

    def sample(self, b: BatchBuilder, entity: str, mountpoint: str, stats: NfsMount) -> None:
        if len(stats.bytes) > SERVER_WRITE:
            b.add(
                entity,
                "fs.read_bytes",
                self._total(("bytes", SERVER_READ), stats.bytes[SERVER_READ])[0],
            )
            b.add(
                entity,
                "fs.write_bytes",
                self._total(("bytes", SERVER_WRITE), stats.bytes[SERVER_WRITE])[0],
            )
        ops_total = retrans_total = 0
        d_ops = d_rtt = d_exec = 0
        have_delta = False
        for name, v in stats.ops.items():
            ops, op_d = self._total((name, OPS), v[OPS])
            trans, _ = self._total((name, TRANS), v[TRANS])
            _, rtt_d = self._total((name, RTT_MS), v[RTT_MS])
            _, exec_d = self._total((name, EXEC_MS), v[EXEC_MS])
            retrans = max(0, trans - ops)
            ops_total += ops
            retrans_total += retrans
            if op_d is not None and rtt_d is not None and exec_d is not None:
                have_delta = True
                d_ops, d_rtt, d_exec = d_ops + op_d, d_rtt + rtt_d, d_exec + exec_d
            if name == "READ":
                b.add(entity, "fs.read_ops", ops)
            elif name == "WRITE":
                b.add(entity, "fs.write_ops", ops)
            if name not in REPORTED_OPS:
                continue
            op_entity = f"{OP_PREFIX}{name}@{mountpoint}"
            b.add(op_entity, "fs.op.count", ops)
            b.add(op_entity, "fs.op.retransmits", retrans)
            b.add(
                op_entity, "fs.op.bytes", self._total((name, -1), v[BYTES_SENT] + v[BYTES_RECV])[0]
            )
            if len(v) > ERRORS:
                b.add(op_entity, "fs.op.errors", self._total((name, ERRORS), v[ERRORS])[0])
            if op_d and rtt_d is not None and exec_d is not None:
                b.add(op_entity, "fs.op.rtt", rtt_d / op_d / 1000)
                b.add(op_entity, "fs.op.latency", exec_d / op_d / 1000)
        b.add(entity, "fs.ops", ops_total)
        b.add(entity, "fs.retransmits", retrans_total)
        if have_delta and d_ops > 0:
            b.add(entity, "fs.rtt", d_rtt / d_ops / 1000)
            b.add(entity, "fs.latency", d_exec / d_ops / 1000)
