"""The fabric collector: every InfiniBand / RoCE port and network interface, each tick.

A machine without InfiniBand has no ``<sys_root>/class/infiniband``: the source then costs one
``listdir`` per tick and logs one debug line, once. Ports and interfaces that appear later are
picked up: the device and interface lists are compared each tick (one ``listdir`` each) and
discovery runs only when they change or a file vanishes.

Each tick reads every kept file once, in one loop over one list of paths (ports' state, phys
state and rate, their counters, the interfaces' speed and operstate), and hands the store one
batch whose entity and metric columns are the previous tick's lists unless what is reported
changed (a port appeared, an error counter turned nonzero, a file read ``N/A``).
"""

from __future__ import annotations

import logging
import os

from agent.catalog.fabric import SOURCE
from agent.model import Batch
from agent.source import CollectContext, Collector
from collectors.fabric.interfaces import Interface, describe_interface, list_interfaces
from collectors.fabric.parse import (
    PHYS_LINK_UP,
    STATE_ACTIVE,
    parse_numbered,
    parse_operstate,
    parse_rate,
    parse_speed,
)
from collectors.fabric.ports import (
    CounterFile,
    Port,
    discover_port,
    list_ports,
    log_absent,
    rate_max,
)
from collectors.fabric.table import CounterTable, read_all

log = logging.getLogger(__name__)

#: Which error counters are shown (nonzero), and which values are absent (None: none).
LayoutKey = tuple[tuple[bool, ...], "tuple[bool, ...] | None"]
Carried = dict[str, tuple[int, int, int, int]]

#: Set by the fabric simulator (collectors/sim/fabric_storage) to its fake tree.
ENV_SYS_ROOT = "ACCELWATCH_FABRIC_SYS_ROOT"


class FabricCollector(Collector):
    """Ports' state, rate and unwrapped counters; interfaces' speed and state."""

    source = SOURCE

    def __init__(self, sys_root: str | os.PathLike[str] | None = None) -> None:
        self._explicit_root = None if sys_root is None else os.fspath(sys_root)
        self.sys_root = self._explicit_root or "/sys"
        self._ports: dict[str, Port] = {}
        self._devices: list[str] | None = None
        self._nics: dict[str, Interface] = {}
        self._nic_names: list[str] | None = None
        #: Per port entity, its best rate while ACTIVE (outlives a rediscovery of the port).
        self._best_rate: dict[str, float] = {}
        self._said_absent = False
        self._rediscover = True
        self._last_ts: float | None = None
        self._plan = _Plan([], [], {})
        self._cache = _Cache()
        self._layout_key: LayoutKey | None = None
        self._layout: tuple[list[str], list[str]] = ([], [])

    def start(self, ctx: CollectContext) -> None:
        if self._explicit_root is None:  # --sys-root, else a scenario's simulated tree
            chosen = ctx.sys_root if ctx.sys_root != "/sys" else None
            self.sys_root = chosen or os.environ.get(ENV_SYS_ROOT) or "/sys"

    @property
    def _ib_base(self) -> str:
        return os.path.join(self.sys_root, "class", "infiniband")

    def counter_events(self, entity: str) -> tuple[int, int]:
        """(wraps, resets) the port's counters went through so far."""
        plan = self._plan
        wraps = plan.data.wraps + plan.errors.wraps
        resets = plan.data.resets + plan.errors.resets
        mine = [i for i, o in enumerate(plan.owner) if plan.ports[o].entity == entity]
        return sum(wraps[i] for i in mine), sum(resets[i] for i in mine)

    def collect(self, now: float) -> Batch:
        attrs: dict[str, dict[str, str]] = {}
        self._check_ports(attrs)
        self._check_interfaces(attrs)
        plan = self._plan
        contents = read_all(plan.paths)
        dt = None if self._last_ts is None else max(now - self._last_ts, 1e-3)
        self._last_ts = now
        values, key = self._values(plan, contents, dt)
        if key != self._layout_key:
            self._layout_key, self._layout = key, plan.layout(key)
        entities, metrics = self._layout
        return Batch(self.source, now, entities, metrics, values, (), attrs)

    def _values(
        self, plan: _Plan, contents: list[bytes | None], dt: float | None
    ) -> tuple[list[float], LayoutKey]:
        """One tick's values in the plan's order, and the key of the layout they fill.

        Parts whose files read as last tick (the ports' state and rate, the error counters,
        the interfaces) reuse last tick's values without parsing."""
        n_heads, n_data = 3 * len(plan.ports), len(plan.data.paths)
        heads = contents[:n_heads]
        cached = self._cache
        if heads == cached.heads:
            head_vals, vanished = cached.head_vals, cached.vanished
        else:
            head_vals, vanished = self._heads(plan, heads)
            cached.heads, cached.head_vals, cached.vanished = heads, head_vals, vanished
        at = n_heads + n_data
        data, gone = plan.data.advance(contents[n_heads:at], lambda i: plan.max_step(i, dt))
        errs, gone_too = plan.errors.advance(contents[at : at + len(plan.errors.paths)],
                                             lambda i: None)  # fmt: skip
        self._rediscover = vanished or gone or gone_too
        if errs is not cached.errs:
            cached.errs, cached.shown = errs, tuple(map(bool, errs))
            cached.sums = [sum(filter(None, errs[a:b])) for a, b in plan.error_ranges]
        nics = contents[at + len(plan.errors.paths) :]
        if nics != cached.nics:
            cached.nics = nics
            cached.nic_vals = [_nic(i & 1, raw) for i, raw in enumerate(nics)]
        nic_vals = cached.nic_vals
        gaps = None
        if None in head_vals or None in data or None in nic_vals:
            gaps = tuple(v is None for v in (*head_vals, *data, *nic_vals))
        key = (cached.shown, gaps)
        if gaps is None:
            values = head_vals + data
        else:
            values = [v for v in (*head_vals, *data) if v is not None]
        values += [v for v in errs if v]
        values += cached.sums
        values += nic_vals if gaps is None else [v for v in nic_vals if v is not None]
        return values, key  # type: ignore[return-value]  # no None left in values

    def _heads(self, plan: _Plan, heads: list[bytes | None]) -> tuple[list[float | None], bool]:
        """Per port: state, phys state, up, rate; then per port its best rate (rate.max)."""
        head_vals: list[float | None] = []
        best = self._best_rate
        vanished = False
        for j, port in enumerate(plan.ports):
            state, phys = _numbered(heads[3 * j]), _numbered(heads[3 * j + 1])
            rate = _rate(heads[3 * j + 2])
            if state is None and phys is None:
                vanished = True
            up = None
            if state is not None and phys is not None:
                up = 1 if state == STATE_ACTIVE and phys == PHYS_LINK_UP else 0
            if rate is not None and state == STATE_ACTIVE:
                port.max_rate = max(port.max_rate, rate)
                best[port.entity] = max(best.get(port.entity, 0.0), rate)
            head_vals += (state, phys, up, rate)
        for port in plan.ports:
            head_vals.append(rate_max(port, best))
        return head_vals, vanished

    # -- discovery
    def _check_ports(self, attrs: dict[str, dict[str, str]]) -> None:
        base = self._ib_base
        try:
            devices = sorted(os.listdir(base))
        except OSError:
            devices = []
        if not devices:
            if not self._said_absent:
                log.debug("fabric: no InfiniBand or RoCE device under %s", base)
                self._said_absent = True
            if self._ports:
                self._ports = {}
                self._replan()
            self._devices = devices
            return
        if devices != self._devices or self._rediscover:
            self._discover(base, devices)
            for port in self._ports.values():
                attrs[port.entity] = port.attrs

    def _discover(self, base: str, devices: list[str]) -> None:
        found: dict[str, Port] = {}
        absent: dict[str, list[str]] = {}
        for ddir, device, port in list_ports(base):
            entity_port, missing = discover_port(ddir, device, port)
            known = self._ports.get(entity_port.entity)
            if known is not None and _same_files(known, entity_port):
                found[known.entity] = known  # keep its running totals
                continue
            found[entity_port.entity] = entity_port
            if missing:
                absent[entity_port.entity] = missing
        if not self._said_absent:
            log_absent(base, absent)
            self._said_absent = bool(absent)
        self._ports = found
        self._devices = devices
        self._rediscover = False
        self._replan()

    def _check_interfaces(self, attrs: dict[str, dict[str, str]]) -> None:
        base = os.path.join(self.sys_root, "class", "net")
        names = list_interfaces(base)
        if names != self._nic_names:
            self._nics = {n: self._nics.get(n) or describe_interface(base, n) for n in names}
            self._nic_names = names
            for nic in self._nics.values():
                attrs[nic.entity] = nic.attrs
            self._replan()

    def _replan(self) -> None:
        carried = {**self._plan.data.state(), **self._plan.errors.state()}
        self._plan = _Plan(list(self._ports.values()), list(self._nics.values()), carried)
        self._cache = _Cache()
        self._layout_key = None


class _Cache:
    """The last tick's raw contents and values of the parts that seldom change."""

    def __init__(self) -> None:
        self.heads: list[bytes | None] | None = None
        self.head_vals: list[float | None] = []
        self.vanished = False
        self.errs: list[float | None] | None = None
        self.shown: tuple[bool, ...] = ()
        self.sums: list[float] = []
        self.nics: list[bytes | None] | None = None
        self.nic_vals: list[float | None] = []


class _Plan:
    """What one tick reads, in order, and the columns its values fill.

    Paths: each port's ``state``, ``phys_state``, ``rate``; the data counters of every port,
    then the error counters port by port; each interface's ``speed`` and ``operstate``."""

    def __init__(self, ports: list[Port], nics: list[Interface], carried: Carried) -> None:
        self.ports, self.nics = ports, nics
        data = [(j, f) for j, p in enumerate(ports) for f in p.counters if not f.error]
        errors = [(j, f) for j, p in enumerate(ports) for f in p.counters if f.error]
        files = data + errors
        self.n_data = len(data)
        self.owner = [j for j, _ in files]
        self.files = [f for _, f in files]
        self.units = [f.per_second_units or 0 for f in self.files]
        self.data = _table([f for _, f in data], carried)
        self.errors = _table([f for _, f in errors], carried)
        self.error_ranges: list[tuple[int, int]] = []
        self.error_ports: list[int] = []
        at = 0
        for j, p in enumerate(ports):
            n = sum(1 for f in p.counters if f.error)
            if n:
                self.error_ranges.append((at, at + n))
                self.error_ports.append(j)
            at += n
        heads = [p.directory + name for p in ports for name in ("/state", "/phys_state", "/rate")]
        nic_files = [n.directory + name for n in nics for name in ("/speed", "/operstate")]
        self.paths = heads + self.data.paths + self.errors.paths + nic_files

    def max_step(self, i: int, dt: float | None) -> float | None:
        """The largest step of counter ``i`` a 32-bit wrap can plausibly explain over ``dt``:
        twice what the port's best rate moves."""
        rate = self.ports[self.owner[i]].max_rate  # i < n_data: the data table's index
        if dt is None or not self.units[i] or rate <= 0:
            return None
        return 2.0 * rate * dt / self.units[i]

    def layout(self, key: LayoutKey) -> tuple[list[str], list[str]]:
        """The entity and metric columns of the values :meth:`FabricCollector._values` gives
        with this ``key`` (which error counters are shown, which values are absent)."""
        shown, gaps = key
        cols: list[tuple[str, str]] = []
        for p in self.ports:
            cols += [(p.entity, m) for m in _HEAD_METRICS[:4]]
        cols += [(p.entity, _HEAD_METRICS[4]) for p in self.ports]
        cols += [(self.ports[self.owner[i]].entity, self.files[i].metric)
                 for i in range(self.n_data)]  # fmt: skip
        nic_cols = [(n.entity, m) for n in self.nics for m in _NIC_METRICS]
        if gaps is not None:
            nic_gaps = gaps[len(gaps) - len(nic_cols) :]
            cols = [c for c, gap in zip(cols, gaps) if not gap]
            nic_cols = [c for c, gap in zip(nic_cols, nic_gaps) if not gap]
        first = self.n_data
        errs = [(self.ports[self.owner[first + i]].entity, self.files[first + i].metric)
                for i, here in enumerate(shown) if here]  # fmt: skip
        sums = [(self.ports[j].entity, "host.ib.errors") for j in self.error_ports]
        cols = cols + errs + sums + nic_cols
        return [e for e, _ in cols], [m for _, m in cols]


_HEAD_METRICS = ("host.ib.state", "host.ib.phys_state", "host.ib.up", "host.ib.rate",
                 "host.ib.rate.max")  # fmt: skip
_NIC_METRICS = ("host.net.speed", "host.net.up")
#: Parsed contents of ``state`` / ``phys_state``, ``rate``, ``speed``, ``operstate``: a
#: handful of distinct strings each, parsed once.
_CACHES: tuple[dict[bytes, float | None], ...] = ({}, {}, {}, {})
_PARSERS = (parse_numbered, parse_rate, parse_speed, parse_operstate)


def _parsed(which: int, raw: bytes | None) -> float | None:
    if raw is None:
        return None
    cache = _CACHES[which]
    try:
        return cache[raw]
    except KeyError:
        if len(cache) > 1024:  # bounded: a few distinct strings in practice
            cache.clear()
        value = cache[raw] = _PARSERS[which](raw)
        return value


def _numbered(raw: bytes | None) -> float | None:
    return _parsed(0, raw)


def _rate(raw: bytes | None) -> float | None:
    value = _parsed(1, raw)
    return value if value else None  # 0 Gb/s: no rate


def _nic(which: int, raw: bytes | None) -> float | None:
    return _parsed(2 + which, raw)


def _table(files: list[CounterFile], carried: Carried) -> CounterTable:
    return CounterTable([f.path for f in files], [f.scale for f in files],
                        [f.wraps for f in files], carried)  # fmt: skip


def _same_files(a: Port, b: Port) -> bool:
    return [c.path for c in a.counters] == [c.path for c in b.counters]
