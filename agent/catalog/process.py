"""Process-tree metrics (source ``process``); the entity is the pid as text."""

from __future__ import annotations

from agent.catalog import metric

SOURCE = "process"

#: Numeric codes for ``process.state`` (psutil status → code).
STATE_CODES = {
    "running": 1,
    "sleeping": 2,
    "disk-sleep": 3,
    "zombie": 4,
    "stopped": 5,
    "tracing-stop": 5,
    "idle": 6,
    "dead": 7,
    "waking": 1,
    "parked": 6,
}


def _m(name, unit, kind, description, **kw):
    return metric(name, unit, kind, description, source=SOURCE, **kw)


METRICS = [
    _m(
        "process.cpu.user",
        "s",
        "counter",
        "CPU time in user mode.",
        otel="process.cpu.time",
        attrs={"cpu.mode": "user"},
    ),
    _m(
        "process.cpu.system",
        "s",
        "counter",
        "CPU time in kernel mode.",
        otel="process.cpu.time",
        attrs={"cpu.mode": "system"},
    ),
    _m(
        "process.cpu.utilization",
        "1",
        "gauge",
        "CPU time over the interval, in cores (1.0 = one core fully busy).",
        otel="process.cpu.utilization",
    ),
    _m("process.memory.rss", "By", "gauge", "Resident set size.", otel="process.memory.usage"),
    _m("process.memory.vms", "By", "gauge", "Virtual memory size.", otel="process.memory.virtual"),
    _m(
        "process.threads",
        "{thread}",
        "gauge",
        "Threads in the process.",
        otel="process.thread.count",
    ),
    _m(
        "process.io.read_bytes",
        "By",
        "counter",
        "Bytes the process read from storage.",
        otel="process.disk.io",
        attrs={"disk.io.direction": "read"},
    ),
    _m(
        "process.io.write_bytes",
        "By",
        "counter",
        "Bytes the process wrote to storage.",
        otel="process.disk.io",
        attrs={"disk.io.direction": "write"},
    ),
    _m(
        "process.ctx_switches.voluntary",
        "{switch}",
        "counter",
        "Voluntary context switches.",
        otel="process.context_switches",
        attrs={"process.context_switch.type": "voluntary"},
    ),
    _m(
        "process.ctx_switches.involuntary",
        "{switch}",
        "counter",
        "Involuntary context switches.",
        otel="process.context_switches",
        attrs={"process.context_switch.type": "involuntary"},
    ),
    _m(
        "process.state",
        "1",
        "gauge",
        "Scheduler state code: 1 running, 2 sleeping, 3 disk-sleep, 4 zombie, 5 stopped, "
        "6 idle, 7 dead, 0 other.",
    ),
]
