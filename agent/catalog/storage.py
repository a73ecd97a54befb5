"""Storage metrics (source ``storage``): the filesystems the job uses, entity ``mount:<path>``.

A mount's figures come from whatever the kernel keeps for its type: NFS from ``mountstats``
(bytes served by the server, operations, RTT and execution time per operation, retransmissions),
Lustre from ``llite.*.stats``, local filesystems from the block device behind them (throughput,
IOPS, queue depth, busy share). The job's own processes' I/O is tied to the mount that holds
their open files (``mount.job.*``: all their reads and writes; on a local filesystem also what
reached its block device, ``mount.job.device_*``). Per-operation NFS figures are entities of
kind ``mount.op``, ``nfsop:<OP>@<path>`` (``nfsop:READ@/mnt/data``). No OpenTelemetry convention covers
per-mount figures, so they export as ``accelwatch.fs.*``.
"""

from __future__ import annotations

from agent.catalog import Metric, metric

SOURCE = "storage"
ENTITY_PREFIX = "mount:"
OP_PREFIX = "nfsop:"


def _m(name: str, unit: str, kind: str, description: str, role: str | None, **kw) -> Metric:
    return metric(
        name,
        unit,
        kind,  # type: ignore[arg-type]
        description,
        source=SOURCE,
        role=role,
        otel=kw.pop("otel", f"accelwatch.{name}"),
        **kw,
    )


METRICS = (
    _m(
        "fs.read_bytes",
        "By",
        "counter",
        "Bytes read through the filesystem (NFS: from the server; Lustre: by clients; local: "
        "from the block device).",
        "mount.read_bytes",
        otel="accelwatch.fs.io",
        attrs={"disk.io.direction": "read"},
    ),
    _m(
        "fs.write_bytes",
        "By",
        "counter",
        "Bytes written through the filesystem.",
        "mount.write_bytes",
        otel="accelwatch.fs.io",
        attrs={"disk.io.direction": "write"},
    ),
    _m(
        "fs.read_ops",
        "{operation}",
        "counter",
        "Read operations (NFS READ RPCs, Lustre read calls, block reads).",
        "mount.read_ops",
        otel="accelwatch.fs.operations",
        attrs={"disk.io.direction": "read"},
    ),
    _m(
        "fs.write_ops",
        "{operation}",
        "counter",
        "Write operations.",
        "mount.write_ops",
        otel="accelwatch.fs.operations",
        attrs={"disk.io.direction": "write"},
    ),
    _m("fs.ops", "{operation}", "counter", "All operations (NFS: every RPC).", "mount.ops"),
    _m(
        "fs.latency",
        "s",
        "gauge",
        "Average time per operation over the interval, as the application waits for it (NFS: "
        "execution time including queueing; block: await).",
        "mount.latency",
    ),
    _m(
        "fs.rtt",
        "s",
        "gauge",
        "Average network round trip per NFS operation over the interval.",
        "mount.rtt",
    ),
    _m(
        "fs.retransmits",
        "{request}",
        "counter",
        "NFS requests sent again (transmissions minus operations).",
        "mount.retransmits",
    ),
    _m(
        "fs.queue_depth",
        "1",
        "gauge",
        "Average I/O requests in flight on the backing block device over the interval.",
        "mount.queue_depth",
    ),
    _m(
        "fs.busy",
        "1",
        "gauge",
        "Share of the interval the backing block device was busy.",
        "mount.busy",
    ),
    _m(
        "fs.job.read_bytes",
        "By",
        "counter",
        "Bytes the job's processes read (rchar) while their open files were all on this mount.",
        "mount.job.read_bytes",
        otel="accelwatch.fs.job.io",
        attrs={"disk.io.direction": "read"},
    ),
    _m(
        "fs.job.write_bytes",
        "By",
        "counter",
        "Bytes the job's processes wrote (wchar) while their open files were all on this mount.",
        "mount.job.write_bytes",
        otel="accelwatch.fs.job.io",
        attrs={"disk.io.direction": "write"},
    ),
    _m(
        "fs.job.device_read_bytes",
        "By",
        "counter",
        "Bytes the job's processes caused to be read from the block device (read_bytes) while "
        "their open files were all on this local mount; pipes and sockets do not count.",
        "mount.job.device_read_bytes",
        otel="accelwatch.fs.job.device.io",
        attrs={"disk.io.direction": "read"},
    ),
    _m(
        "fs.job.device_write_bytes",
        "By",
        "counter",
        "Bytes the job's processes dirtied for writing to the block device (write_bytes) while "
        "their open files were all on this local mount; pipes and sockets do not count.",
        "mount.job.device_write_bytes",
        otel="accelwatch.fs.job.device.io",
        attrs={"disk.io.direction": "write"},
    ),
    _m("fs.op.count", "{operation}", "counter", "NFS operations of this type.", None),
    _m("fs.op.latency", "s", "gauge", "Average execution time per operation.", None),
    _m("fs.op.rtt", "s", "gauge", "Average round trip per operation over the interval.", None),
    _m("fs.op.retransmits", "{request}", "counter", "Retransmissions of this type.", None),
    _m("fs.op.errors", "{error}", "counter", "Operations of this type that failed.", None),
    _m("fs.op.bytes", "By", "counter", "Bytes sent and received by this operation type.", None),
)
