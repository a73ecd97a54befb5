"""Host metrics (source ``host``): CPU, memory, swap, load, networks.

Disks are the ``disk`` source (:mod:`agent.catalog.disk`), InfiniBand ports the ``fabric`` one
(:mod:`agent.catalog.fabric`); their metric names kept the ``host.`` prefix they were published with.
"""

from __future__ import annotations

from agent.catalog import metric

SOURCE = "host"
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _m(name, unit, kind, description, **kw):
    return metric(name, unit, kind, description, source=SOURCE, **kw)


METRICS = [
    _m(
        "host.cpu.utilization",
        "1",
        "gauge",
        "Busy share of CPU time over the interval (entity host: all cores; cpuN: one core).",
        otel="system.cpu.utilization",
    ),
    *[
        _m(
            f"host.cpu.{mode}",
            "1",
            "gauge",
            f"Share of all CPU time spent in {mode} mode over the interval.",
            otel="system.cpu.mode.utilization",
            attrs={"cpu.mode": mode},
        )
        for mode in CPU_MODES
    ],
    _m("host.cpu.count", "{cpu}", "gauge", "Logical CPUs.", otel="system.cpu.logical.count"),
    _m("host.load.1m", "1", "gauge", "1-minute load average.", otel="system.cpu.load_average.1m"),
    _m("host.load.5m", "1", "gauge", "5-minute load average.", otel="system.cpu.load_average.5m"),
    _m(
        "host.load.15m", "1", "gauge", "15-minute load average.", otel="system.cpu.load_average.15m"
    ),
    _m("host.memory.total", "By", "gauge", "Physical memory.", otel="system.memory.limit"),
    _m(
        "host.memory.used",
        "By",
        "gauge",
        "Physical memory in use (total - available).",
        otel="system.memory.usage",
        attrs={"system.memory.state": "used"},
    ),
    _m(
        "host.memory.available",
        "By",
        "gauge",
        "Memory available to new processes.",
        otel="system.memory.usage",
        attrs={"system.memory.state": "free"},
    ),
    _m(
        "host.memory.utilization",
        "1",
        "gauge",
        "Used share of physical memory.",
        otel="system.memory.utilization",
        attrs={"system.memory.state": "used"},
    ),
    _m("host.swap.total", "By", "gauge", "Swap space.", otel="system.paging.limit"),
    _m(
        "host.swap.used",
        "By",
        "gauge",
        "Swap space in use.",
        otel="system.paging.usage",
        attrs={"system.paging.state": "used"},
    ),
    _m(
        "host.swap.in",
        "By",
        "counter",
        "Bytes swapped in from disk since boot.",
        otel="system.paging.operations",
        attrs={"system.paging.direction": "in"},
    ),
    _m(
        "host.swap.out",
        "By",
        "counter",
        "Bytes swapped out to disk since boot.",
        otel="system.paging.operations",
        attrs={"system.paging.direction": "out"},
    ),
    _m(
        "host.net.rx_bytes",
        "By",
        "counter",
        "Bytes received on the interface.",
        otel="system.network.io",
        attrs={"network.io.direction": "receive"},
        role="interface.rx_bytes",
    ),
    _m(
        "host.net.tx_bytes",
        "By",
        "counter",
        "Bytes sent on the interface.",
        otel="system.network.io",
        attrs={"network.io.direction": "transmit"},
        role="interface.tx_bytes",
    ),
    _m(
        "host.net.rx_packets",
        "{packet}",
        "counter",
        "Packets received on the interface.",
        otel="system.network.packets",
        attrs={"network.io.direction": "receive"},
    ),
    _m(
        "host.net.tx_packets",
        "{packet}",
        "counter",
        "Packets sent on the interface.",
        otel="system.network.packets",
        attrs={"network.io.direction": "transmit"},
    ),
    _m(
        "host.net.errors",
        "{error}",
        "counter",
        "Receive and transmit errors on the interface.",
        otel="system.network.errors",
    ),
]
