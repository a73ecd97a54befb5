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


_MEMINFO_KEYS = (b"MemTotal:", b"MemAvailable:", b"SwapTotal:", b"SwapFree:")
_PAGE_IN, _PAGE_OUT = b"pswpin ", b"pswpout "


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def memory(proc: str = "/proc") -> tuple[int, int, int, int, int, int]:
    """(total, available, swap total, swap used, swapped in, swapped out) in bytes, as psutil's
    ``virtual_memory()`` and ``swap_memory()`` give them, from one read of ``meminfo`` and one
    of ``vmstat`` (psutil reads ``meminfo`` twice and parses every line of both into dicts;
    that was most of this collector's tick). psutil answers where a field is missing."""
    try:
        info = _read(f"{proc}/meminfo")
        found: dict[bytes, int] = {}
        for line in info.split(b"\n"):
            key = line[: line.find(b":") + 1]
            if key in _MEMINFO_KEYS:
                found[key] = int(line.split()[1]) * 1024
        vmstat = _read(f"{proc}/vmstat")
        pages_in = vmstat.find(_PAGE_IN)
        pages_out = vmstat.find(_PAGE_OUT)
        if len(found) < len(_MEMINFO_KEYS) or pages_in < 0 or pages_out < 0:
            raise ValueError("a field is missing")
        swap_in = int(vmstat[pages_in + len(_PAGE_IN) : vmstat.find(b"\n", pages_in)])
        swap_out = int(vmstat[pages_out + len(_PAGE_OUT) : vmstat.find(b"\n", pages_out)])
    except (OSError, ValueError):
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        return vm.total, vm.available, sw.total, sw.used, sw.sin, sw.sout
    swap_total = found[b"SwapTotal:"]
    return (
        found[b"MemTotal:"],
        found[b"MemAvailable:"],
        swap_total,
        swap_total - found[b"SwapFree:"],
        swap_in * 4096,  # pages of 4 KiB, as psutil counts them
        swap_out * 4096,
    )


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
        total, available, swap_total, swap_used, swap_in, swap_out = memory()
        b.add("host", "host.memory.total", total)
        b.add("host", "host.memory.available", available)
        b.add("host", "host.memory.used", total - available)
        b.add("host", "host.memory.utilization", (total - available) / total)
        b.add("host", "host.swap.total", swap_total)
        b.add("host", "host.swap.used", swap_used)
        b.add("host", "host.swap.in", swap_in)
        b.add("host", "host.swap.out", swap_out)
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
