"""Fabric metrics (source ``fabric``): InfiniBand / RoCE ports, entity ``ib:<device>/<port>``.

The names keep the ``host.ib.`` prefix they were published with; recordings made before the
source existed carry ``source = 'host'`` for them, and readers select them by name, role or
entity kind, never by that column.
"""

from __future__ import annotations

from agent.catalog import metric

SOURCE = "fabric"
ENTITY_PREFIX = "ib:"

ROLE_OF = {
    "host.ib.rx_bytes": "port.rx_bytes",
    "host.ib.tx_bytes": "port.tx_bytes",
}


def _m(name, unit, kind, description, **kw):
    return metric(name, unit, kind, description, source=SOURCE, role=ROLE_OF.get(name), **kw)


METRICS = [
    _m(
        "host.ib.rx_bytes",
        "By",
        "counter",
        "Bytes received on the InfiniBand port.",
        otel="accelwatch.host.ib.io",
        attrs={"network.io.direction": "receive"},
    ),
    _m(
        "host.ib.tx_bytes",
        "By",
        "counter",
        "Bytes sent on the InfiniBand port.",
        otel="accelwatch.host.ib.io",
        attrs={"network.io.direction": "transmit"},
    ),
]
