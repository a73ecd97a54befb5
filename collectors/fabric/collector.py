"""The fabric collector: every InfiniBand / RoCE port and network interface, each tick.

A machine without InfiniBand has no ``<sys_root>/class/infiniband``: the source then costs one
``listdir`` per tick and logs one debug line, once. Ports and interfaces that appear later are
picked up: the device and interface lists are compared each tick (one ``listdir`` each) and
discovery runs only when they change or a file vanishes.
"""

from __future__ import annotations

import logging
import os

from agent.catalog.fabric import SOURCE
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector
from collectors.fabric.interfaces import (
    Interface,
    describe_interface,
    list_interfaces,
    sample_interface,
)
from collectors.fabric.ports import (
    Port,
    discover_port,
    list_ports,
    log_absent,
    rate_max,
    sample_port,
)

log = logging.getLogger(__name__)

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
        self._device_max: dict[str, float] = {}
        self._said_absent = False
        self._rediscover = True

    def start(self, ctx: CollectContext) -> None:
        if self._explicit_root is None:  # --sys-root, else a scenario's simulated tree
            chosen = ctx.sys_root if ctx.sys_root != "/sys" else None
            self.sys_root = chosen or os.environ.get(ENV_SYS_ROOT) or "/sys"

    @property
    def _ib_base(self) -> str:
        return os.path.join(self.sys_root, "class", "infiniband")

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        self._sample_ports(b, now)
        self._sample_interfaces(b)
        return b.build()

    def _sample_ports(self, b: BatchBuilder, now: float) -> None:
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
                self._ports.clear()
            self._devices = devices
            return
        if devices != self._devices or self._rediscover:
            self._discover(base, devices)
            for port in self._ports.values():
                b.describe(port.entity, **port.attrs)
        vanished = False
        for port in self._ports.values():
            if not sample_port(b, port, now, self._device_max):
                vanished = True
        for port in self._ports.values():
            b.add(port.entity, "host.ib.rate.max", rate_max(port, self._device_max))
        self._rediscover = vanished

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

    def _sample_interfaces(self, b: BatchBuilder) -> None:
        base = os.path.join(self.sys_root, "class", "net")
        names = list_interfaces(base)
        if names != self._nic_names:
            self._nics = {n: self._nics.get(n) or describe_interface(base, n) for n in names}
            self._nic_names = names
            for nic in self._nics.values():
                b.describe(nic.entity, **nic.attrs)
        for nic in self._nics.values():
            sample_interface(b, nic)


def _same_files(a: Port, b: Port) -> bool:
    return [c.path for c in a.counters] == [c.path for c in b.counters]
