"""What each panel shows, computed from a :class:`agent.reader.Frame` (pure, no Textual).

Widgets only lay these out; the arithmetic (rates, sums, tree order, throttle decoding) lives
here so it is tested without a terminal. Accelerators are found by entity kind (the source
registry) and read by metric role (``agent/catalog/roles.py``), so a card never asks which
driver measured the device.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.catalog import CATALOG
from agent.catalog.roles import LATENCIES, latency_role
from agent.model import Batch
from agent.reader import Frame
from agent.registry import default_registry
from agent.snapshot import Snapshot
from tui.fabric_storage import InterfaceLine, MountLine, PortLine, fabric_storage_lines

ACCELERATOR = "accelerator"
BUSY = "accelerator.busy"
COMPUTE = "accelerator.compute.activity"
TENSOR = "accelerator.tensor.activity"
#: Roles drawn as sparklines on the cards (the reader tracks their recent history).
SPARK_ROLES = (BUSY, COMPUTE, TENSOR)
#: Throttle roles that mean the device runs slower than it could (idle clocks are benign).
SLOWDOWN_ROLES = (
    "accelerator.throttle.power",
    "accelerator.throttle.slowdown",
    "accelerator.throttle.thermal",
    "accelerator.throttle.thermal_hw",
    "accelerator.throttle.power_brake",
)
QUEUE = "accelerator.queue.size"
#: Runtime latency percentiles a card shows (a TPU's HLO execution, transfers, collectives).
LATENCY_ROLES = tuple(latency_role(stem, q) for stem in LATENCIES for q in ("p50", "p99"))
#: The kind of a source's per-host runtime entity, whose latencies the source's cards show.
RUNTIME_KIND = "accelerator.runtime"
#: Roles a card reads (optional ones are drawn only when the device's source declares them).
CARD_ROLES = (
    *SPARK_ROLES,
    "accelerator.memory.used",
    "accelerator.memory.total",
    "accelerator.power",
    "accelerator.power.limit",
    "accelerator.temperature",
    "accelerator.clock",
    "accelerator.clock.max",
    "accelerator.clock.memory",
    *SLOWDOWN_ROLES,
    "accelerator.host_link.tx",
    "accelerator.host_link.rx",
    "accelerator.peer_link.tx",
    "accelerator.peer_link.rx",
    "accelerator.fault",
    "accelerator.ecc.uncorrected",
    QUEUE,
    *LATENCY_ROLES,
)
HOST_SPARK_METRICS = ("host.cpu.utilization",)
SORT_KEYS = ("tree", "cpu", "rss", "gpu_mem", "io")


def role_metrics(source: str) -> dict[str, str]:
    """Role → the metric of ``source`` that plays it (the first declared, if several)."""
    out: dict[str, str] = {}
    for m in CATALOG.by_source(source):
        if m.role is not None:
            out.setdefault(m.role, m.name)
    return out


#: source → its card roles (role → metric), device word; the catalog and the registry do not
#: change while the UI runs, and every tick reads them for every card.
_CARD_METRICS: dict[str, dict[str, str]] = {}
_DEVICE_WORDS: dict[str, str] = {}


def card_metrics(source: str) -> dict[str, str]:
    """Role → metric of ``source`` for the roles a card reads (computed once per source)."""
    found = _CARD_METRICS.get(source)
    if found is None:
        found = _CARD_METRICS[source] = {
            role: name for role, name in role_metrics(source).items() if role in CARD_ROLES
        }
    return found


def accelerator_sources() -> frozenset[str]:
    """Sources that declare an entity kind ``accelerator`` (only their batches hold cards)."""
    return frozenset(
        spec.name
        for spec in default_registry().specs()
        if any(kind.kind == ACCELERATOR for kind in spec.entity_kinds)
    )


def tracked_metrics() -> tuple[str, ...]:
    """Metrics whose recent history the cards and host panel draw, from every source."""
    names = [m.name for role in SPARK_ROLES for m in CATALOG.by_role(role)]
    return (*dict.fromkeys(names), *HOST_SPARK_METRICS)


@dataclass(frozen=True, eq=False)
class AcceleratorView:
    """One accelerator of any source, read by role: ``get("accelerator.busy")``."""

    entity: str
    name: str
    used_by_job: bool
    #: Role → value now (roles the source declares; None when it sent no value this tick).
    values: Mapping[str, float | None]
    #: Active slowdowns, named by their metric's last word (``sw_power_cap``).
    throttle: tuple[str, ...]
    #: Role → recent values, oldest first.
    recent: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: The device stopped answering (its source marks it lost) or sends no values any more.
    lost: bool = False
    source: str = ""
    #: Role → the source's metric name (the card's short labels come from it).
    metrics: Mapping[str, str] = field(default_factory=dict)
    #: What the source calls the device (its ``hw.type``: GPU, TPU...), for messages.
    device_word: str = "DEVICE"

    def get(self, role: str) -> float | None:
        return self.values.get(role)

    def has(self, role: str) -> bool:
        """Whether the device's source declares ``role`` (optional card lines need it)."""
        return role in self.metrics

    def label(self, role: str, default: str = "") -> str:
        """A short word for ``role`` from the source's own metric name (``gpu.sm.activity``
        → ``sm``, ``gpu.nvlink.tx_throughput`` → ``nvl``)."""
        metric = self.metrics.get(role)
        return default if metric is None else short_label(metric)

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


#: Kept for callers that predate accelerators of other sources.
GpuView = AcceleratorView
_ABBREVIATIONS = {"tensor": "tc", "nvlink": "nvl", "utilization": "util", "memory": "mem"}


def short_label(metric: str) -> str:
    """The word that tells ``metric`` apart: its first component after the source's prefix
    (``gpu.pcie.tx_throughput`` → ``pcie``), abbreviated when long."""
    parts = metric.split(".")
    word = parts[1] if len(parts) > 2 else parts[-1]
    return _ABBREVIATIONS.get(word, word)


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
    #: Fabric ports, busy or down interfaces and the job's mounts, one line each
    #: (tui/fabric_storage.py).
    ports: tuple[PortLine, ...] = ()
    mounts: tuple[MountLine, ...] = ()
    interfaces: tuple[InterfaceLine, ...] = ()


@functools.lru_cache(maxsize=4096)
def _natural(entity: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"([0-9]+)", entity))


def accelerator_entities(snap: Snapshot) -> list[tuple[str, str]]:
    """``(source, entity)`` of every entity of kind ``accelerator``, whatever its source:
    sampled now or described before (a device that went silent keeps its card)."""
    registry = default_registry()
    wanted = accelerator_sources()
    found: dict[tuple[str, str], None] = {}
    sources: dict[str, None] = {}
    for batch in snap.batches:
        sources[batch.source] = None
        if batch.source not in wanted:
            continue
        for entity in dict.fromkeys(batch.entities):
            if registry.kind_of(batch.source, entity) == ACCELERATOR:
                found[(batch.source, entity)] = None
    ordered = [source for source in sources if source in wanted]
    ordered += sorted(wanted - set(ordered))
    known = {entity for _, entity in found}
    for entity in snap.entity_attrs:
        if entity in known:
            continue
        for source in ordered:
            if registry.kind_of(source, entity) == ACCELERATOR:
                found[(source, entity)] = None
                break
    return sorted(found, key=lambda key: (_natural(key[1]), key[0]))


def gpu_entities(snap: Snapshot) -> list[str]:
    """Accelerator entity names (kept for benchmarks that count cards)."""
    return [entity for _, entity in accelerator_entities(snap)]


def throttle_reasons(snap: Snapshot, entity: str, metrics: Mapping[str, str]) -> tuple[str, ...]:
    """Active slowdowns of ``entity``, named by their metric's last word (``hw_thermal``)."""
    active = []
    for role in SLOWDOWN_ROLES:
        metric = metrics.get(role)
        if metric is not None and snap.value(entity, metric):
            active.append(metric.rsplit(".", 1)[-1])
    return tuple(active)


def device_word(source: str) -> str:
    """``GPU`` for a source whose accelerator kind declares ``hw.type: gpu``; else ``DEVICE``."""
    word = _DEVICE_WORDS.get(source)
    if word is None:
        word = _DEVICE_WORDS[source] = _device_word(source)
    return word


def _device_word(source: str) -> str:
    spec = default_registry().get(source)
    for kind in spec.entity_kinds if spec is not None else ():
        word = kind.otel_attributes.get("hw.type", "")
        if kind.kind == ACCELERATOR and word and "{" not in word:
            return word.upper()
    return "DEVICE"


def runtime_entities(snap: Snapshot) -> dict[str, str]:
    """Source → its entity of kind ``accelerator.runtime`` sampled now (a TPU host's runtime)."""
    registry = default_registry()
    wanted = accelerator_sources()
    out: dict[str, str] = {}
    for batch in snap.batches:
        if batch.source not in wanted:
            continue
        for entity in dict.fromkeys(batch.entities):
            if batch.source not in out and registry.kind_of(batch.source, entity) == RUNTIME_KIND:
                out[batch.source] = entity
    return out


def accelerator_views(frame: Frame) -> list[AcceleratorView]:
    """One view per accelerator entity, its values read through its source's roles; latency
    roles the device has no value for come from its source's runtime entity (per host)."""
    snap = frame.snapshot
    wanted = accelerator_sources()
    sampled = {(b.source, e) for b in snap.batches if b.source in wanted for e in set(b.entities)}
    runtimes = runtime_entities(snap)
    views = []
    for source, entity in accelerator_entities(snap):
        metrics = card_metrics(source)
        attrs = snap.entity_attrs.get(entity, {})
        values = {role: snap.value(entity, name) for role, name in metrics.items()}
        runtime = runtimes.get(source)
        if runtime is not None:
            for role in LATENCY_ROLES:
                if role in metrics and values[role] is None:
                    values[role] = snap.value(runtime, metrics[role])
        views.append(
            AcceleratorView(
                entity=entity,
                name=str(attrs.get("name", "")),
                used_by_job=bool(attrs.get("used_by_job", True)),
                values=values,
                throttle=throttle_reasons(snap, entity, metrics),
                recent={
                    role: frame.recent.get((entity, metrics[role]), np.empty(0))
                    for role in SPARK_ROLES
                    if role in metrics
                },
                lost=bool(attrs.get("lost")) or (source, entity) not in sampled,
                source=source,
                metrics=metrics,
                device_word=device_word(source),
            )
        )
    return views


#: Kept for callers that predate accelerators of other sources.
gpu_views = accelerator_views


def _gpu_memory_by_pid(snap: Snapshot) -> dict[int, float]:
    out: dict[int, float] = {}
    for batch in _batches_with(snap, _GPU_PROCESS_MEMORY):
        for entity, name, value in zip(batch.entities, batch.metrics, batch.values):
            if name == "gpu.process.memory" and "/pid" in entity:
                pid = int(entity.rsplit("/pid", 1)[1])
                out[pid] = out.get(pid, 0.0) + value
    return out


_GPU_PROCESS_MEMORY = frozenset(("gpu.process.memory",))


def _batches_with(snap: Snapshot, metrics: frozenset[str]) -> list[Batch]:
    """The tick's batches that hold any of ``metrics``: a C-speed membership test per batch
    instead of a Python loop over every value of the tick (thousands with eight GPUs)."""
    return [batch for batch in snap.batches if not metrics.isdisjoint(batch.metrics)]


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


def _sum_rates(
    snap: Snapshot, prefix: str, metric: str, by_metric: Mapping[str, set[str]] | None = None
) -> float | None:
    # Whatever source recorded them: disks and fabric ports were the host's before their own.
    if by_metric is None:
        by_metric = _entities_by_metric(snap, (metric,))
    entities = by_metric.get(metric, set())
    rates = [snap.rate(e, metric) for e in sorted(entities) if e.startswith(prefix)]
    known = [r for r in rates if r is not None]
    return sum(known) if known else None


def _entities_by_metric(snap: Snapshot, metrics: Sequence[str]) -> dict[str, set[str]]:
    """Entities sampled now of each of ``metrics`` (one pass over the tick's batches)."""
    wanted = frozenset(metrics)
    out: dict[str, set[str]] = {m: set() for m in metrics}
    for batch in _batches_with(snap, wanted):
        for entity, metric in zip(batch.entities, batch.metrics):
            if metric in wanted:
                out[metric].add(entity)
    return out


_HOST_RATES = (
    "host.disk.read_bytes",
    "host.disk.write_bytes",
    "host.net.rx_bytes",
    "host.net.tx_bytes",
    "host.ib.rx_bytes",
    "host.ib.tx_bytes",
)


def host_view(frame: Frame) -> HostView:
    snap = frame.snapshot
    by_metric = _entities_by_metric(snap, _HOST_RATES)
    core_names = sorted(
        (e for e in snap.entities("host") if e.startswith("cpu") and e[3:].isdigit()),
        key=lambda e: int(e[3:]),
    )
    ports, interfaces, mounts = fabric_storage_lines(snap)
    return HostView(
        cores=tuple(snap.value(c, "host.cpu.utilization") or 0.0 for c in core_names),
        cpu=snap.value("host", "host.cpu.utilization"),
        memory_used=snap.value("host", "host.memory.used"),
        memory_total=snap.value("host", "host.memory.total"),
        disk_read=_sum_rates(snap, "disk:", "host.disk.read_bytes", by_metric),
        disk_write=_sum_rates(snap, "disk:", "host.disk.write_bytes", by_metric),
        net_rx=_sum_rates(snap, "net:", "host.net.rx_bytes", by_metric),
        net_tx=_sum_rates(snap, "net:", "host.net.tx_bytes", by_metric),
        ib_rx=_sum_rates(snap, "ib:", "host.ib.rx_bytes", by_metric),
        ib_tx=_sum_rates(snap, "ib:", "host.ib.tx_bytes", by_metric),
        ports=ports,
        mounts=mounts,
        interfaces=interfaces,
    )
