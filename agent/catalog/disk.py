"""Block-device metrics (source ``disk``); the entity is ``disk:<device>``, e.g. ``disk:nvme0n1``.

The names keep the ``host.disk.`` prefix they were published with (dashboards and the SQL views
use them); recordings made before the source existed carry ``source = 'host'`` for them, and
readers select them by name, role or entity kind, never by that column.
"""

from __future__ import annotations

from agent.catalog import metric

SOURCE = "disk"
ENTITY_PREFIX = "disk:"

ROLE_OF = {
    "host.disk.read_bytes": "disk.read_bytes",
    "host.disk.write_bytes": "disk.write_bytes",
    "host.disk.busy_time": "disk.busy_time",
}


def _m(name, unit, kind, description, **kw):
    return metric(name, unit, kind, description, source=SOURCE, role=ROLE_OF.get(name), **kw)


METRICS = [
    _m(
        "host.disk.read_bytes",
        "By",
        "counter",
        "Bytes read from the block device.",
        otel="system.disk.io",
        attrs={"disk.io.direction": "read"},
    ),
    _m(
        "host.disk.write_bytes",
        "By",
        "counter",
        "Bytes written to the block device.",
        otel="system.disk.io",
        attrs={"disk.io.direction": "write"},
    ),
    _m(
        "host.disk.read_ops",
        "{operation}",
        "counter",
        "Read operations completed.",
        otel="system.disk.operations",
        attrs={"disk.io.direction": "read"},
    ),
    _m(
        "host.disk.write_ops",
        "{operation}",
        "counter",
        "Write operations completed.",
        otel="system.disk.operations",
        attrs={"disk.io.direction": "write"},
    ),
    _m(
        "host.disk.busy_time",
        "s",
        "counter",
        "Time the device spent doing I/O.",
        otel="system.disk.io_time",
    ),
]
