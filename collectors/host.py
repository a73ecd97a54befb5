"""Host collector: CPU per core and by mode, memory, swap, load, networks.

Disks and InfiniBand ports are sources of their own (:mod:`collectors.disk`,
:mod:`collectors.fabric`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import psutil

from agent.catalog.host import CPU_MODES, METRICS, SOURCE
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector, EntityKind, SourceSpec
from collectors.procfs import KeptFile, Unwrapped

_SKIPPED_NICS = ("lo",)


#: ``/proc/stat``'s columns of a ``cpu`` line, as psutil names them (kernels since 2.6.33 have
#: all ten); guest time is already counted in user (and guest_nice in nice).
_CPU_FIELDS = (
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
)
_COUNTED = 8  # the columns before guest
_IDLE, _IOWAIT = 3, 4
_MODE_AT = [(mode, _CPU_FIELDS.index(mode)) for mode in CPU_MODES]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


Reader = Callable[[str], bytes]


def net_counters(data: bytes) -> tuple[dict[str, tuple[int, ...]], int]:
    """(rx bytes, tx bytes, rx packets, tx packets, rx errors, tx errors) of each interface
    but loopback in a ``net/dev`` file, parsed as psutil's ``net_io_counters`` does (its line
    rule, its ValueError on a line it does not know), and how many interfaces it lists."""
    out: dict[str, tuple[int, ...]] = {}
    lines = data.splitlines()[2:]
    for line in lines:
        colon = line.rfind(b":")
        f = line[colon + 1 :].split()
        if colon <= 0 or len(f) != 16:
            raise ValueError(f"not a net/dev line: {line!r}")
        name = line[:colon].strip().decode("utf-8", "surrogateescape")
        if name not in _SKIPPED_NICS:
            out[name] = (int(f[0]), int(f[8]), int(f[1]), int(f[9]), int(f[2]), int(f[10]))
    return out, len(lines)


def _busy(times: tuple[float, ...]) -> tuple[float, float]:
    """(busy, total) seconds of one ``cpu`` line, summed in psutil's order (the same floats)."""
    total = sum(times[:_COUNTED])
    idle = times[_IDLE] + (times[_IOWAIT] if len(times) > _IOWAIT else 0.0)
    return total - idle, total


def cpu_times(proc: str = "/proc", read: Reader = _read) -> list[tuple[float, ...]]:
    """Every ``cpu`` line of one ``/proc/stat`` read in seconds: the machine's, then each
    core's, the values psutil's ``cpu_times()`` and ``cpu_times(percpu=True)`` give from two
    reads of the file (and a named tuple per core). psutil answers where the file is not the
    kernel's usual one."""
    try:
        lines = [
            line.split() for line in read(f"{proc}/stat").split(b"\n") if line.startswith(b"cpu")
        ]
        if not lines or lines[0][0] != b"cpu" or min(map(len, lines)) <= _IOWAIT + 1:
            raise ValueError("not a /proc/stat this parser knows")
        ticks = _CLOCK_TICKS
        return [tuple([float(x) / ticks for x in line[1 : len(_CPU_FIELDS) + 1]]) for line in lines]
    except (OSError, ValueError):
        times = [psutil.cpu_times(), *psutil.cpu_times(percpu=True)]
        return [tuple(getattr(t, name) for name in _CPU_FIELDS if name in t._fields) for t in times]


_MEMINFO_KEYS = (b"\nMemTotal:", b"\nMemAvailable:", b"\nSwapTotal:", b"\nSwapFree:")
_PAGE_IN, _PAGE_OUT = b"pswpin ", b"pswpout "


def _kib(info: bytes, key: bytes) -> int:
    """Bytes of one ``meminfo`` line (``key`` starts with a newline: a line's start), found
    where it is, not by splitting every line; ValueError when it is missing."""
    at = info.find(key)
    if at < 0:
        raise ValueError(f"no {key.decode().strip()} in meminfo")
    end = info.find(b"\n", at + 1)
    return int(info[at + len(key) : end if end >= 0 else len(info)].split()[0]) * 1024


def memory(proc: str = "/proc", read: Reader = _read) -> tuple[int, int, int, int, int, int]:
    """(total, available, swap total, swap used, swapped in, swapped out) in bytes, as psutil's
    ``virtual_memory()`` and ``swap_memory()`` give them, from one read of ``meminfo`` and one
    of ``vmstat`` (psutil reads ``meminfo`` twice and parses every line of both into dicts;
    that was most of this collector's tick). psutil answers where a field is missing."""
    try:
        info = b"\n" + read(f"{proc}/meminfo")
        found = {key: _kib(info, key) for key in _MEMINFO_KEYS}
        vmstat = read(f"{proc}/vmstat")
        pages_in = vmstat.find(_PAGE_IN)
        pages_out = vmstat.find(_PAGE_OUT)
        if pages_in < 0 or pages_out < 0:
            raise ValueError("a field is missing")
        swap_in = int(vmstat[pages_in + len(_PAGE_IN) : vmstat.find(b"\n", pages_in)])
        swap_out = int(vmstat[pages_out + len(_PAGE_OUT) : vmstat.find(b"\n", pages_out)])
    except (OSError, ValueError):
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        return vm.total, vm.available, sw.total, sw.used, sw.sin, sw.sout
    swap_total = found[b"\nSwapTotal:"]
    return (
        found[b"\nMemTotal:"],
        found[b"\nMemAvailable:"],
        swap_total,
        swap_total - found[b"\nSwapFree:"],
        swap_in * 4096,  # pages of 4 KiB, as psutil counts them
        swap_out * 4096,
    )


class HostCollector(Collector):
    """Samples the whole machine; rates are left to the store (counters stay cumulative)."""

    source = SOURCE

    def __init__(self, proc: str = "/proc") -> None:
        #: Where ``stat``, ``meminfo``, ``vmstat`` and ``net/dev`` are read (the machine's own;
        #: tests point it at written files).
        self.proc = proc
        self._prev: list[tuple[float, ...]] = []
        # On the kernel's procfs the four files stay open and are read again at offset 0.
        keep = os.path.realpath(proc) == "/proc"
        self._files = {
            f"{proc}/{name}": KeptFile(f"{proc}/{name}", keep=keep)
            for name in ("stat", "meminfo", "vmstat")
        }
        self._net = KeptFile(f"{proc}/net/dev", keep=keep, records=True)
        self._net_counters = Unwrapped()

    def _read(self, path: str) -> bytes:
        kept = self._files.get(path)
        return kept.read() if kept is not None else _read(path)

    def start(self, ctx: CollectContext) -> None:
        self._prev = cpu_times(self.proc, self._read)

    def close(self) -> None:
        for kept in (*self._files.values(), self._net):
            kept.close()

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        self._cpu(b)
        total, available, swap_total, swap_used, swap_in, swap_out = memory(self.proc, self._read)
        b.add_row(
            "host",
            _MEMORY_ROW,
            [
                float(total),
                float(available),
                float(total - available),
                (total - available) / total,
                float(swap_total),
                float(swap_used),
                float(swap_in),
                float(swap_out),
                *os.getloadavg(),
            ],
        )
        for name, (rx, tx, rx_packets, tx_packets, err_in, err_out) in self._networks().items():
            b.add_row(
                f"net:{name}",
                _NET_ROW,
                [
                    float(rx),
                    float(tx),
                    float(rx_packets),
                    float(tx_packets),
                    float(err_in + err_out),
                ],
            )
        return b.build()

    def _networks(self) -> dict[str, tuple[int, ...]]:
        """Each interface's counters: one read of ``net/dev`` with psutil's wrap rule (the
        values ``psutil.net_io_counters(pernic=True)`` gives, without its named tuples and
        its text decoding); psutil's own where the file cannot be read or parsed."""
        try:
            return self._net_counters.run(*net_counters(self._net.read()))
        except (OSError, ValueError):
            return {
                name: (
                    io.bytes_recv,
                    io.bytes_sent,
                    io.packets_recv,
                    io.packets_sent,
                    io.errin,
                    io.errout,
                )
                for name, io in (psutil.net_io_counters(pernic=True) or {}).items()
                if name not in _SKIPPED_NICS
            }

    def _cpu(self, b: BatchBuilder) -> None:
        lines = cpu_times(self.proc)
        prev, self._prev = self._prev, lines
        b.add("host", "host.cpu.count", len(lines) - 1)
        if not prev:
            return
        total, before = lines[0], prev[0]
        busy1, all1 = _busy(total)
        busy0, all0 = _busy(before)
        span = all1 - all0
        if span > 0:
            b.add("host", "host.cpu.utilization", max(0.0, (busy1 - busy0) / span))
            for mode, at in _MODE_AT:
                if at < len(total):
                    b.add("host", f"host.cpu.{mode}", max(0.0, (total[at] - before[at]) / span))
        for i, (now_c, before_c) in enumerate(zip(lines[1:], prev[1:])):
            busy1, all1 = _busy(now_c)
            busy0, all0 = _busy(before_c)
            if all1 - all0 > 0:
                b.add(f"cpu{i}", "host.cpu.utilization", max(0.0, (busy1 - busy0) / (all1 - all0)))


_MEMORY_ROW = (
    "host.memory.total",
    "host.memory.available",
    "host.memory.used",
    "host.memory.utilization",
    "host.swap.total",
    "host.swap.used",
    "host.swap.in",
    "host.swap.out",
    "host.load.1m",
    "host.load.5m",
    "host.load.15m",
)
_NET_ROW = (
    "host.net.rx_bytes",
    "host.net.tx_bytes",
    "host.net.rx_packets",
    "host.net.tx_packets",
    "host.net.errors",
)


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
