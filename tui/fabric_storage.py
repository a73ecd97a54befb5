"""Lines of the host panel for fabric ports and the job's mounts, read by role and kind.

Ports are the entities with a ``port.rx_bytes`` metric, mounts those with ``mount.read_bytes``:
whatever source reported them (InfiniBand, RoCE, a third-party fabric plug-in; NFS, Lustre,
block devices). Rates come from the snapshot's counters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.catalog import CATALOG
from agent.snapshot import Snapshot

#: At most this many ports and mounts are drawn; the rest are counted.
MAX_LINES = 4


@dataclass(frozen=True)
class PortLine:
    name: str
    rx: float | None
    tx: float | None
    rate: float | None
    rate_max: float | None
    up: float | None
    errors: float | None  # per second


@dataclass(frozen=True)
class MountLine:
    name: str
    fstype: str
    read: float | None
    write: float | None
    latency: float | None


def _names(role: str) -> list[str]:
    return [m.name for m in CATALOG.by_role(role)]


def _entities(snap: Snapshot, metrics: Iterable[str]) -> list[str]:
    wanted = set(metrics)
    return sorted({e for (e, m) in snap.values if m in wanted})


def _first(snap: Snapshot, entity: str, names: list[str], rate: bool = False) -> float | None:
    for name in names:
        value = snap.rate(entity, name) if rate else snap.value(entity, name)
        if value is not None:
            return value
    return None


def port_lines(snap: Snapshot) -> tuple[PortLine, ...]:
    rx, tx = _names("port.rx_bytes"), _names("port.tx_bytes")
    rate, best, up, errors = (_names(r) for r in ("port.rate", "port.rate.max", "port.up",
                                                    "port.errors"))  # fmt: skip
    return tuple(
        PortLine(
            e.partition(":")[2] or e,
            _first(snap, e, rx, rate=True),
            _first(snap, e, tx, rate=True),
            _first(snap, e, rate),
            _first(snap, e, best),
            _first(snap, e, up),
            _first(snap, e, errors, rate=True),
        )
        for e in _entities(snap, rx)
    )


def mount_lines(snap: Snapshot) -> tuple[MountLine, ...]:
    read, write, latency = (_names(r) for r in ("mount.read_bytes", "mount.write_bytes",
                                                 "mount.latency"))  # fmt: skip
    out = []
    for e in _entities(snap, read):
        attrs = snap.entity_attrs.get(e, {})
        out.append(
            MountLine(
                str(attrs.get("mountpoint") or e.partition(":")[2] or e),
                str(attrs.get("fstype") or ""),
                _first(snap, e, read, rate=True),
                _first(snap, e, write, rate=True),
                _first(snap, e, latency),
            )
        )
    return tuple(out)
