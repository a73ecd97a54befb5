"""Fabric metrics (source ``fabric``): InfiniBand / RoCE ports and the NICs' line rate and state.

Entities: ``ib:<device>/<port>`` (kind ``port``, e.g. ``ib:mlx5_0/1``) and ``net:<interface>``
(kind ``interface``; the ``host`` source counts the interface's bytes, this one says how fast
and whether it is up, so utilization against line rate is known).

The names keep the ``host.ib.`` prefix they were published with; recordings made before the
source existed carry ``source = 'host'`` for them, and readers select them by name, role or
entity kind, never by that column. Counters are cumulative and only grow: the collector
unwraps the 32-bit sysfs counters and carries resets forward, so ``value - lag(value)`` is the
traffic of the interval.
"""

from __future__ import annotations

from agent.catalog import Metric, metric

SOURCE = "fabric"
ENTITY_PREFIX = "ib:"
INTERFACE_PREFIX = "net:"

#: ``counters/`` (and ``counters_ext/``) error files: each a counter of its own, summed into
#: ``host.ib.errors`` (role ``port.errors``). ``port_xmit_wait`` is congestion, not an error.
ERROR_COUNTERS = (
    "symbol_error",
    "link_downed",
    "link_error_recovery",
    "port_rcv_errors",
    "port_rcv_remote_physical_errors",
    "port_rcv_switch_relay_errors",
    "port_xmit_discards",
    "port_xmit_constraint_errors",
    "port_rcv_constraint_errors",
    "local_link_integrity_errors",
    "excessive_buffer_overrun_errors",
    "VL15_dropped",
)

#: ``hw_counters/`` (mlx5 RoCE congestion and transport) file → (metric, role, description).
HW_COUNTERS = {
    "np_cnp_sent": ("host.ib.cnp_sent", "port.cnp", "Congestion notification packets sent."),
    "rp_cnp_handled": (
        "host.ib.cnp_handled",
        "port.cnp",
        "Congestion notification packets handled (the sender slowed down).",
    ),
    "np_ecn_marked_roce_packets": (
        "host.ib.ecn_marked",
        "port.ecn",
        "RoCE packets received with an ECN congestion mark.",
    ),
    "out_of_buffer": (
        "host.ib.out_of_buffer",
        "port.drops",
        "Packets dropped: no receive buffer posted.",
    ),
    "packet_seq_err": (
        "host.ib.packet_seq_err",
        "port.retransmits",
        "Packet sequence errors (a NAK asked for a retransmission).",
    ),
    "local_ack_timeout_err": (
        "host.ib.local_ack_timeout_err",
        "port.retransmits",
        "Transport ACK timeouts (the sender retransmitted).",
    ),
    "roce_adp_retrans": (
        "host.ib.adaptive_retransmits",
        "port.retransmits",
        "Adaptive retransmissions of RoCE traffic.",
    ),
    "out_of_sequence": (
        "host.ib.out_of_sequence",
        None,
        "Out-of-sequence packets received.",
    ),
}

ROLE_OF = {
    "host.ib.rx_bytes": "port.rx_bytes",
    "host.ib.tx_bytes": "port.tx_bytes",
    "host.ib.rx_packets": "port.rx_packets",
    "host.ib.tx_packets": "port.tx_packets",
    "host.ib.rate": "port.rate",
    "host.ib.rate.max": "port.rate.max",
    "host.ib.state": "port.state",
    "host.ib.phys_state": "port.phys_state",
    "host.ib.up": "port.up",
    "host.ib.errors": "port.errors",
    "host.ib.xmit_wait": "port.xmit_wait",
    "host.net.speed": "interface.speed",
    "host.net.up": "interface.up",
}


def _m(name: str, unit: str, kind: str, description: str, **kw) -> Metric:
    role = kw.pop("role", ROLE_OF.get(name))
    return metric(name, unit, kind, description, source=SOURCE, role=role, **kw)  # type: ignore[arg-type]


METRICS = [
    _m(
        "host.ib.rx_bytes",
        "By",
        "counter",
        "Bytes received on the InfiniBand port.",
        otel="accelwatch.ib.io",
        attrs={"network.io.direction": "receive"},
    ),
    _m(
        "host.ib.tx_bytes",
        "By",
        "counter",
        "Bytes sent on the InfiniBand port.",
        otel="accelwatch.ib.io",
        attrs={"network.io.direction": "transmit"},
    ),
    _m(
        "host.ib.rx_packets",
        "{packet}",
        "counter",
        "Packets received on the port.",
        otel="accelwatch.ib.packets",
        attrs={"network.io.direction": "receive"},
    ),
    _m(
        "host.ib.tx_packets",
        "{packet}",
        "counter",
        "Packets sent on the port.",
        otel="accelwatch.ib.packets",
        attrs={"network.io.direction": "transmit"},
    ),
    _m(
        "host.ib.rate",
        "By/s",
        "gauge",
        "The port's current line rate (sysfs 'rate', e.g. 200 Gb/sec = 25e9 By/s).",
        otel="accelwatch.ib.rate",
    ),
    _m(
        "host.ib.rate.max",
        "By/s",
        "gauge",
        "Highest line rate the port reached while ACTIVE during the run: a rate below it is a "
        "downtrained link.",
        otel="accelwatch.ib.rate.max",
    ),
    _m(
        "host.ib.state",
        "1",
        "gauge",
        "Logical port state: 1 DOWN, 2 INIT, 3 ARMED, 4 ACTIVE, 5 ACTIVE_DEFER.",
        otel="accelwatch.ib.state",
    ),
    _m(
        "host.ib.phys_state",
        "1",
        "gauge",
        "Physical port state: 2 Polling, 3 Disabled, 5 LinkUp, 6 LinkErrorRecovery ...",
        otel="accelwatch.ib.phys_state",
    ),
    _m(
        "host.ib.up",
        "1",
        "gauge",
        "1 while the port is ACTIVE and LinkUp, else 0.",
        otel="accelwatch.ib.up",
    ),
    _m(
        "host.ib.errors",
        "{error}",
        "counter",
        "All error counters of the port summed (symbol errors, link downed, discards ...).",
        otel="accelwatch.ib.errors",
    ),
    *[
        _m(
            f"host.ib.{name}",
            "{error}",
            "counter",
            f"The port's {name} counter.",
            otel="accelwatch.ib.error",
            attrs={"error.type": name},
        )
        for name in ERROR_COUNTERS
    ],
    _m(
        "host.ib.xmit_wait",
        "{tick}",
        "counter",
        "Ticks the port had data to send but no flow-control credits (congestion).",
        otel="accelwatch.ib.xmit_wait",
    ),
    *[
        _m(name, "{packet}", "counter", text, role=role, otel=f"accelwatch.ib.{name[8:]}")
        for name, role, text in HW_COUNTERS.values()
    ],
    _m(
        "host.net.speed",
        "By/s",
        "gauge",
        "The network interface's line rate (sysfs 'speed', Mb/s converted).",
        otel="accelwatch.net.speed",
    ),
    _m(
        "host.net.up",
        "1",
        "gauge",
        "1 while the interface's operstate is 'up', else 0.",
        otel="accelwatch.net.up",
    ),
]
