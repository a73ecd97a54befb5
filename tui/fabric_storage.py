"""Lines of the host panel for fabric ports, network interfaces and the job's mounts, by role.

Ports are the entities with a ``port.rx_bytes`` metric, interfaces those with
``interface.speed`` or ``interface.rx_bytes``, mounts those with ``mount.read_bytes``: whatever
source reported them (InfiniBand, RoCE, a third-party fabric plug-in; NFS, Lustre, block
devices). Rates come from the snapshot's counters.

Each tick touches only these roles' values: which entities carry them is remembered per batch
by its columns (the collectors hand on the same entity and metric lists while their layout
holds), so a batch is scanned again only when its columns changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.catalog import CATALOG
from agent.snapshot import Snapshot

#: At most this many ports, interfaces and mounts are drawn; the rest are counted.
MAX_LINES = 4
#: An interface moving less than this (bytes/s, both ways) carries no traffic: a few packets a
#: second of ARP and neighbour discovery are not the job's.
TRAFFIC_MIN = 1000.0
#: Interfaces that never carry the job's traffic between nodes.
_LOOPBACK = frozenset({"lo"})


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
class InterfaceLine:
    name: str
    rx: float | None  # bytes/s
    tx: float | None
    speed: float | None  # line rate, bytes/s
    up: float | None

    @property
    def utilization(self) -> float | None:
        """The busier direction's share of the line rate."""
        busiest = max(self.rx or 0.0, self.tx or 0.0)
        return busiest / self.speed if self.speed else None


@dataclass(frozen=True)
class MountLine:
    name: str
    fstype: str
    read: float | None
    write: float | None
    latency: float | None


def _names(role: str) -> tuple[str, ...]:
    return tuple(m.name for m in CATALOG.by_role(role))


_ROLES = ("port.rx_bytes", "port.tx_bytes", "port.rate", "port.rate.max", "port.up",
          "port.errors", "interface.rx_bytes", "interface.tx_bytes", "interface.speed",
          "interface.up", "mount.read_bytes", "mount.write_bytes", "mount.latency")  # fmt: skip


class RoleIndex:
    """Which entities carry the metrics of :data:`_ROLES` in a tick, found without scanning
    every value: a batch's (entities, metrics) columns are remembered per source and position
    with what they held; a batch whose columns are the same lists (or equal ones) is not
    scanned again."""

    def __init__(self) -> None:
        self.names = {role: _names(role) for role in _ROLES}
        self._wanted = frozenset(n for names in self.names.values() for n in names)
        self._seen: dict[tuple[str, int], tuple[Sequence[str], Sequence[str], dict]] = {}

    def entities(self, snap: Snapshot) -> dict[str, set[str]]:
        """Metric name → the entities that have it now (only the wanted metrics)."""
        out: dict[str, set[str]] = {}
        count: dict[str, int] = {}
        seen = self._seen
        for batch in snap.batches:
            n = count[batch.source] = count.get(batch.source, -1) + 1
            key = (batch.source, n)
            known = seen.get(key)
            ents, mets = batch.entities, batch.metrics
            if known is None or not (
                (known[1] is mets or known[1] == mets) and (known[0] is ents or known[0] == ents)
            ):
                found: dict[str, set[str]] = {}
                wanted = self._wanted
                for entity, metric in zip(ents, mets):
                    if metric in wanted:
                        found.setdefault(metric, set()).add(entity)
                if len(seen) > 256:  # bounded: sources come and go
                    seen.clear()
                known = seen[key] = (ents, mets, found)
            for metric, those in known[2].items():
                if metric in out:
                    out[metric] = out[metric] | those
                else:
                    out[metric] = those
        return out

    def with_role(self, found: dict[str, set[str]], *roles: str) -> list[str]:
        """The entities having a metric of any of ``roles``, sorted."""
        out: set[str] = set()
        for role in roles:
            for name in self.names[role]:
                out.update(found.get(name, ()))
        return sorted(out)


_INDEX: RoleIndex | None = None


def _index() -> RoleIndex:
    global _INDEX
    if _INDEX is None:
        _INDEX = RoleIndex()
    return _INDEX


def _first(snap: Snapshot, entity: str, names: Sequence[str], rate: bool = False) -> float | None:
    for name in names:
        value = snap.rate(entity, name) if rate else snap.value(entity, name)
        if value is not None:
            return value
    return None


def port_lines(snap: Snapshot, found: dict[str, set[str]] | None = None) -> tuple[PortLine, ...]:
    index = _index()
    found = index.entities(snap) if found is None else found
    n = index.names
    rx, tx, rate, best = n["port.rx_bytes"], n["port.tx_bytes"], n["port.rate"], n["port.rate.max"]
    up, errors = n["port.up"], n["port.errors"]
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
        for e in index.with_role(found, "port.rx_bytes")
    )


def interface_lines(
    snap: Snapshot, found: dict[str, set[str]] | None = None
) -> tuple[InterfaceLine, ...]:
    """Interfaces that carry traffic (at least :data:`TRAFFIC_MIN` bytes/s), and physical,
    bond or VLAN ones that are down; not the loopback, nor idle or down virtual interfaces."""
    index = _index()
    found = index.entities(snap) if found is None else found
    n = index.names
    rx, tx, speed, up = (n[r] for r in ("interface.rx_bytes", "interface.tx_bytes",
                                        "interface.speed", "interface.up"))  # fmt: skip
    out = []
    for e in index.with_role(found, "interface.speed", "interface.rx_bytes"):
        name = e.partition(":")[2] or e
        if name in _LOOPBACK:
            continue
        line = InterfaceLine(name, _first(snap, e, rx, rate=True), _first(snap, e, tx, rate=True),
                             _first(snap, e, speed), _first(snap, e, up))  # fmt: skip
        # A down virtual interface (an unused ifb or dummy, a stopped container's veth) is the
        # node's furniture, not the job's fabric: only a physical, bond or VLAN one counts.
        virtual = snap.entity_attrs.get(e, {}).get("kind") == "virtual"
        down = line.up is not None and line.up < 1 and not virtual
        if down or (line.rx or 0.0) + (line.tx or 0.0) >= TRAFFIC_MIN:
            out.append(line)
    return tuple(out)


def mount_lines(snap: Snapshot, found: dict[str, set[str]] | None = None) -> tuple[MountLine, ...]:
    index = _index()
    found = index.entities(snap) if found is None else found
    n = index.names
    read, write, latency = n["mount.read_bytes"], n["mount.write_bytes"], n["mount.latency"]
    out = []
    for e in index.with_role(found, "mount.read_bytes"):
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


def fabric_storage_lines(
    snap: Snapshot,
) -> tuple[tuple[PortLine, ...], tuple[InterfaceLine, ...], tuple[MountLine, ...]]:
    """Ports, interfaces and mounts of one tick, from one look at its batches."""
    found = _index().entities(snap)
    return port_lines(snap, found), interface_lines(snap, found), mount_lines(snap, found)
