"""What each panel shows, computed from a :class:`agent.reader.Frame` (pure, no Textual).

Widgets only lay these out; the arithmetic (rates, sums, tree order, throttle decoding) lives
here so it is tested without a terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.catalog.gpu import CLOCK_EVENT_FLAGS
from agent.catalog.gpu import SOURCE as GPU_SOURCE
from agent.reader import Frame
from agent.snapshot import Snapshot

#: Clock-event reasons that mean the GPU runs slower than it could (the rest are benign).
SLOWDOWN_FLAGS = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")
#: GPU metrics drawn as sparklines on the cards (tracked by the reader for recent history).
CARD_SPARK_METRICS = ("gpu.utilization", "gpu.sm.activity", "gpu.tensor.activity")
HOST_SPARK_METRICS = ("host.cpu.utilization",)
TRACKED_METRICS = CARD_SPARK_METRICS + HOST_SPARK_METRICS
SORT_KEYS = ("tree", "cpu", "rss", "gpu_mem", "io")


@dataclass(frozen=True, eq=False)
class GpuView:
    entity: str
    name: str
    used_by_job: bool
    values: Mapping[str, float | None]
    throttle: tuple[str, ...]
    recent: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: The device stopped answering (NVML marks it lost) or sends no values any more.
    lost: bool = False

    def get(self, metric: str) -> float | None:
        return self.values.get(metric)

    def signature(self) -> tuple:
        """Equal signatures draw the same card (numpy arrays make ``==`` unusable)."""
        return (
            self.entity,
            self.name,
            self.used_by_job,
            self.lost,
            tuple(sorted(self.values.items())),
            self.throttle,
            tuple((k, v.tobytes()) for k, v in sorted(self.recent.items())),
        )


@dataclass(frozen=True)
class ProcessRow:
    pid: int
    depth: int
    role: str
    name: str
    cpu: float | None
    rss: float | None
    read_rate: float | None
    write_rate: float | None
    gpu_memory: float | None


@dataclass(frozen=True)
class HostView:
    cores: tuple[float, ...]
    cpu: float | None
    memory_used: float | None
    memory_total: float | None
    disk_read: float | None
    disk_write: float | None
    net_rx: float | None
    net_tx: float | None
    ib_rx: float | None
    ib_tx: float | None


def _is_device(entity: str) -> bool:
    return entity.startswith("gpu") and entity[3:].isdigit()


def gpu_entities(snap: Snapshot) -> list[str]:
    """Whole-device GPU entities (``gpu0``...) sampled now or described before, by index."""
    names = {e for e in snap.entities(GPU_SOURCE) if _is_device(e)}
    names.update(e for e in snap.entity_attrs if _is_device(e))
    return sorted(names, key=lambda e: int(e[3:]))


def throttle_reasons(snap: Snapshot, gpu: str) -> tuple[str, ...]:
    """Active slowdown reasons, from the per-flag gauges or else the NVML bitmask."""
    active = []
    mask = snap.value(gpu, "gpu.clock_events")
    for flag in SLOWDOWN_FLAGS:
        value = snap.value(gpu, f"gpu.clock_event.{flag}")
        if value is None and mask is not None:
            value = float(int(mask) & CLOCK_EVENT_FLAGS[flag] != 0)
        if value:
            active.append(flag)
    return tuple(active)


def gpu_views(frame: Frame) -> list[GpuView]:
    snap = frame.snapshot
    sampled = set(snap.entities(GPU_SOURCE))
    views = []
    for gpu in gpu_entities(snap):
        attrs = snap.entity_attrs.get(gpu, {})
        values = {name: value for (entity, name), value in snap.values.items() if entity == gpu}
        for counter in ("gpu.pcie.tx_bytes", "gpu.pcie.rx_bytes"):
            gauge = counter.replace("_bytes", "_throughput")
            if gauge not in values:
                values[gauge] = snap.rate(gpu, counter)
        views.append(
            GpuView(
                entity=gpu,
                name=str(attrs.get("name", "")),
                used_by_job=bool(attrs.get("used_by_job", True)),
                values=values,
                throttle=throttle_reasons(snap, gpu),
                recent={m: frame.recent.get((gpu, m), np.empty(0)) for m in CARD_SPARK_METRICS},
                lost=bool(attrs.get("lost")) or gpu not in sampled,
            )
        )
    return views


def _gpu_memory_by_pid(snap: Snapshot) -> dict[int, float]:
    out: dict[int, float] = {}
    for (entity, name), value in snap.values.items():
        if name == "gpu.process.memory" and "/pid" in entity:
            pid = int(entity.rsplit("/pid", 1)[1])
            out[pid] = out.get(pid, 0.0) + value
    return out


def process_rows(frame: Frame, sort: str = "tree") -> list[ProcessRow]:
    """The job's process tree; ``tree`` keeps parent-before-child order, else largest first."""
    snap = frame.snapshot
    pids = [int(e) for e in snap.entities("process")]
    attrs = {pid: snap.entity_attrs.get(str(pid), {}) for pid in pids}
    gpu_mem = _gpu_memory_by_pid(snap)
    depth = _tree_depths(pids, {pid: attrs[pid].get("ppid") for pid in pids})
    rows = []
    for pid in pids:
        key = str(pid)
        a = attrs[pid]
        rows.append(
            ProcessRow(
                pid=pid,
                depth=depth[pid][0],
                role=str(a.get("role", "")),
                name=_short_command(a),
                cpu=snap.value(key, "process.cpu.utilization"),
                rss=snap.value(key, "process.memory.rss"),
                read_rate=snap.rate(key, "process.io.read_bytes"),
                write_rate=snap.rate(key, "process.io.write_bytes"),
                gpu_memory=gpu_mem.get(pid),
            )
        )
    if sort == "tree":
        return sorted(rows, key=lambda r: depth[r.pid][1])
    measure = {
        "cpu": lambda r: r.cpu,
        "rss": lambda r: r.rss,
        "gpu_mem": lambda r: r.gpu_memory,
        "io": lambda r: (r.read_rate or 0.0) + (r.write_rate or 0.0),
    }[sort]
    return sorted(rows, key=lambda r: (-(measure(r) or 0.0), r.pid))


def _tree_depths(
    pids: Sequence[int], parents: Mapping[int, object]
) -> dict[int, tuple[int, tuple[int, ...]]]:
    """pid → (depth, path of pids from the top) so sorting by path gives tree order."""
    known = set(pids)
    out: dict[int, tuple[int, tuple[int, ...]]] = {}
    for pid in pids:
        path = [pid]
        parent = parents.get(pid)
        while isinstance(parent, int) and parent in known and parent not in path:
            path.append(parent)
            parent = parents.get(parent)
        out[pid] = (len(path) - 1, tuple(reversed(path)))
    return out


def _short_command(attrs: Mapping[str, object]) -> str:
    cmdline = attrs.get("cmdline") or []
    if isinstance(cmdline, list) and cmdline:
        return " ".join(str(part) for part in cmdline)
    return str(attrs.get("name", ""))


def _sum_rates(snap: Snapshot, prefix: str, metric: str) -> float | None:
    # Whatever source recorded them: disks and fabric ports were the host's before their own.
    entities = {e for b in snap.batches for e, m in zip(b.entities, b.metrics) if m == metric}
    rates = [snap.rate(e, metric) for e in sorted(entities) if e.startswith(prefix)]
    known = [r for r in rates if r is not None]
    return sum(known) if known else None


def host_view(frame: Frame) -> HostView:
    snap = frame.snapshot
    core_names = sorted(
        (e for e in snap.entities("host") if e.startswith("cpu") and e[3:].isdigit()),
        key=lambda e: int(e[3:]),
    )
    return HostView(
        cores=tuple(snap.value(c, "host.cpu.utilization") or 0.0 for c in core_names),
        cpu=snap.value("host", "host.cpu.utilization"),
        memory_used=snap.value("host", "host.memory.used"),
        memory_total=snap.value("host", "host.memory.total"),
        disk_read=_sum_rates(snap, "disk:", "host.disk.read_bytes"),
        disk_write=_sum_rates(snap, "disk:", "host.disk.write_bytes"),
        net_rx=_sum_rates(snap, "net:", "host.net.rx_bytes"),
        net_tx=_sum_rates(snap, "net:", "host.net.tx_bytes"),
        ib_rx=_sum_rates(snap, "ib:", "host.ib.rx_bytes"),
        ib_tx=_sum_rates(snap, "ib:", "host.ib.tx_bytes"),
    )
