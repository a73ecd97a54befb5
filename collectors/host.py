"""Host collector: CPU per core and by mode, memory, swap, load, networks.

Disks and InfiniBand ports are sources of their own (:mod:`collectors.disk`,
:mod:`collectors.fabric`).
"""

from __future__ import annotations

import os

import psutil

from agent.catalog.host import CPU_MODES, METRICS, SOURCE
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector, EntityKind, SourceSpec

_SKIPPED_NICS = ("lo",)


def _busy(times) -> tuple[float, float]:
    """(busy, total) seconds of a psutil cpu_times tuple; guest time is already in user."""
    d = times._asdict()
    total = sum(v for k, v in d.items() if k not in ("guest", "guest_nice"))
    idle = d.get("idle", 0.0) + d.get("iowait", 0.0)
    return total - idle, total


class HostCollector(Collector):
    """Samples the whole machine; rates are left to the store (counters stay cumulative)."""

    source = SOURCE

    def __init__(self) -> None:
        self._prev_total = None
        self._prev_cores = None

    def start(self, ctx: CollectContext) -> None:
        self._prev_total = psutil.cpu_times()
        self._prev_cores = psutil.cpu_times(percpu=True)

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        self._cpu(b)
        vm = psutil.virtual_memory()
        b.add("host", "host.memory.total", vm.total)
        b.add("host", "host.memory.available", vm.available)
        b.add("host", "host.memory.used", vm.total - vm.available)
        b.add("host", "host.memory.utilization", (vm.total - vm.available) / vm.total)
        sw = psutil.swap_memory()
        b.add("host", "host.swap.total", sw.total)
        b.add("host", "host.swap.used", sw.used)
        b.add("host", "host.swap.in", sw.sin)
        b.add("host", "host.swap.out", sw.sout)
        load1, load5, load15 = os.getloadavg()
        b.add("host", "host.load.1m", load1)
        b.add("host", "host.load.5m", load5)
        b.add("host", "host.load.15m", load15)
        for name, io in (psutil.net_io_counters(pernic=True) or {}).items():
            if name in _SKIPPED_NICS:
                continue
            entity = f"net:{name}"
            b.add(entity, "host.net.rx_bytes", io.bytes_recv)
            b.add(entity, "host.net.tx_bytes", io.bytes_sent)
            b.add(entity, "host.net.rx_packets", io.packets_recv)
            b.add(entity, "host.net.tx_packets", io.packets_sent)
            b.add(entity, "host.net.errors", io.errin + io.errout)
        return b.build()

    def _cpu(self, b: BatchBuilder) -> None:
        total = psutil.cpu_times()
        cores = psutil.cpu_times(percpu=True)
        b.add("host", "host.cpu.count", len(cores))
        prev_total, prev_cores = self._prev_total, self._prev_cores
        self._prev_total, self._prev_cores = total, cores
        if prev_total is None:
            return
        busy1, all1 = _busy(total)
        busy0, all0 = _busy(prev_total)
        span = all1 - all0
        if span > 0:
            b.add("host", "host.cpu.utilization", max(0.0, (busy1 - busy0) / span))
            now_d, before_d = total._asdict(), prev_total._asdict()
            for mode in CPU_MODES:
                if mode in now_d:
                    b.add(
                        "host", f"host.cpu.{mode}", max(0.0, (now_d[mode] - before_d[mode]) / span)
                    )
        for i, (now_c, before_c) in enumerate(zip(cores, prev_cores or ())):
            busy1, all1 = _busy(now_c)
            busy0, all0 = _busy(before_c)
            if all1 - all0 > 0:
                b.add(f"cpu{i}", "host.cpu.utilization", max(0.0, (busy1 - busy0) / (all1 - all0)))


SPEC = SourceSpec(
    name=SOURCE,
    label="Host",
    metrics=tuple(METRICS),
    entity_kinds=(
        EntityKind("host", "host"),
        EntityKind("cpu", "cpu(?P<cpu>[0-9]+)", {"cpu.logical_number": "{cpu}"}),
        EntityKind("interface", "net:(?P<interface>.+)", {"network.interface.name": "{interface}"}),
    ),
    collector=HostCollector,
    start_order=10,
)
