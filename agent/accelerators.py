"""Which entities are accelerators and which of their source's metrics fill each column of the
analysis' accelerator frame (``aw_accel``): the plan, from the registered sources' declarations.

Which entities are accelerators comes from the source registry (their ``EntityKind``), and which
metric fills a column from the metric's **role** (``agent/catalog/roles.py``): ``busy`` is
whatever metric of the entity's source plays ``accelerator.busy`` (``gpu.utilization`` for NVML,
a duty cycle for a TPU). Kept out of :mod:`agent.analysis` because the writer needs the plan too
(:mod:`agent.analysed`: which series get stored buckets), and the store must not depend on the
analysis that reads it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agent.catalog.roles import ROLES
from agent.registry import SourceRegistry, default_registry
from agent.source import SourceSpec
from agent.sql_text import in_list

ACCELERATOR = "accelerator"

#: ``aw_accel`` column → the role whose metric fills it.
ACCEL_COLUMNS: Mapping[str, str] = MappingProxyType(
    {
        "busy": "accelerator.busy",
        "mem_util": "accelerator.memory.busy",
        "sm": "accelerator.compute.activity",
        "tensor": "accelerator.tensor.activity",
        "mem_bw": "accelerator.memory.bandwidth",
        "fp16": "accelerator.fp16.activity",
        "fp32": "accelerator.fp32.activity",
        "queue": "accelerator.queue.size",
        "mem_used": "accelerator.memory.used",
        "mem_total": "accelerator.memory.total",
        "temp": "accelerator.temperature",
        "power": "accelerator.power",
        "power_limit": "accelerator.power.limit",
        "clock": "accelerator.clock",
        "clock_max": "accelerator.clock.max",
        "host_tx": "accelerator.host_link.tx",
        "host_rx": "accelerator.host_link.rx",
        "host_gen": "accelerator.host_link.gen",
        "host_gen_max": "accelerator.host_link.gen.max",
        "host_width": "accelerator.host_link.width",
        "host_width_max": "accelerator.host_link.width.max",
        "host_replays": "accelerator.host_link.replays",
        "peer_tx": "accelerator.peer_link.tx",
        "peer_rx": "accelerator.peer_link.rx",
        "peer_links": "accelerator.peer_link.active",
        "energy": "accelerator.energy",
        "fault": "accelerator.fault",
        "ecc_uncorrected": "accelerator.ecc.uncorrected",
        "remap_uncorrectable": "accelerator.memory.remap.uncorrectable",
        "remap_pending": "accelerator.memory.remap.pending",
        "remap_failure": "accelerator.memory.remap.failure",
        "job_memory": "accelerator.job.memory",
        "job_procs": "accelerator.job.processes",
        "thr_idle": "accelerator.throttle.idle",
        "thr_power": "accelerator.throttle.power",
        "thr_power_brake": "accelerator.throttle.power_brake",
        "thr_slowdown": "accelerator.throttle.slowdown",
        "thr_thermal": "accelerator.throttle.thermal",
        "thr_thermal_hw": "accelerator.throttle.thermal_hw",
    }
)
if not set(ACCEL_COLUMNS.values()) <= set(ROLES):
    raise ValueError("ACCEL_COLUMNS names a role agent/catalog/roles.py does not declare")
COLUMN_OF_ROLE: Mapping[str, str] = MappingProxyType({r: c for c, r in ACCEL_COLUMNS.items()})
#: A pattern made only of these pieces cannot match a name containing ``/`` (the separator of
#: an accelerator's parts: ``gpu0/mig1``, ``gpu0/nvlink3``), so the raw scan may skip those.
_SLASH_FREE = re.compile(
    r"(?:[A-Za-z0-9_:-]|\\d|\\w|\[(?:[A-Za-z0-9_]-[A-Za-z0-9_]|[A-Za-z0-9_])*\]"
    r"|\(\?P<[A-Za-z_][A-Za-z0-9_]*>|\(\?:|[()|+*?]|\{[0-9]+(?:,[0-9]*)?\})*"
)


#: OpenTelemetry ``hw.type`` values findings name as such (any other: "accelerator").
_NOUNS = {"gpu": "GPU", "tpu": "TPU", "npu": "NPU"}


@dataclass(frozen=True)
class AcceleratorSource:
    """One source's accelerators: their name patterns and which of its metrics fills each column."""

    name: str
    patterns: tuple[str, ...]
    columns: Mapping[str, str]
    #: What a finding calls the device: from the kind's OpenTelemetry ``hw.type``.
    noun: str = "accelerator"
    #: Next-step advice by topic, from the source's declaration (``SourceSpec.advice``).
    advice: Mapping[str, str] = field(default_factory=dict)

    @property
    def attributes_job(self) -> bool:
        """Whether the source can tell which of its devices the job uses."""
        return "job_memory" in self.columns or "job_procs" in self.columns

    @property
    def slash_free(self) -> bool:
        return all(_SLASH_FREE.fullmatch(p) for p in self.patterns)


def accelerator_source(spec: SourceSpec) -> AcceleratorSource | None:
    """What ``spec`` contributes to ``aw_accel`` (None if it declares no accelerator)."""
    kinds = [k for k in spec.entity_kinds if k.kind == ACCELERATOR]
    if not kinds:
        return None
    hw_types = {k.otel_attributes.get("hw.type") or "" for k in kinds}
    noun = _NOUNS.get(hw_types.pop(), "accelerator") if len(hw_types) == 1 else "accelerator"
    columns: dict[str, str] = {}
    for m in spec.metrics:
        column = COLUMN_OF_ROLE.get(m.role or "")
        if column is not None:
            columns.setdefault(column, m.name)
    patterns = tuple(k.pattern for k in kinds)
    advice = MappingProxyType(dict(spec.advice))
    return AcceleratorSource(spec.name, patterns, MappingProxyType(columns), noun, advice)


@dataclass(frozen=True)
class AcceleratorPlan:
    """The accelerator sources registered now, and the SQL that selects their entities."""

    sources: tuple[AcceleratorSource, ...]
    #: SQL boolean over ``source``/``entity``: the row is an accelerator.
    predicate: str

    def source(self, name: str) -> AcceleratorSource | None:
        return next((s for s in self.sources if s.name == name), None)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m for s in self.sources for m in s.columns.values())

    def role_metrics(self, column: str) -> tuple[str, ...]:
        """The metric filling ``column``, of every accelerator source that declares one."""
        return tuple(s.columns[column] for s in self.sources if column in s.columns)

    def metric_sources(self) -> list[tuple[str, str]]:
        return [(m, s.name) for s in self.sources for m in s.columns.values()]

    def part_filter(self, other_metrics: Iterable[str]) -> str:
        """SQL over raw samples of ``other_metrics`` and the accelerator metrics that skips an
        accelerator's parts (its ``gpu0/nvlink3`` rows), which no accelerator column reads.

        Written as "no ``/``, or a metric that is no slash-free source's" because the list of
        other metrics is the shorter one to test (the scan's hottest filter)."""
        kept = [
            *other_metrics,
            *(m for s in self.sources if not s.slash_free for m in s.columns.values()),
        ]
        return f"(NOT contains(entity, '/') OR metric IN ({in_list(kept)}))"


def accelerator_plan(registry: SourceRegistry | None = None) -> AcceleratorPlan:
    """The plan for the sources registered now (cheap: built from their declarations)."""
    registry = registry or default_registry()
    sources = tuple(a for spec in registry.specs() if (a := accelerator_source(spec)))
    return AcceleratorPlan(sources, registry.kind_predicate(ACCELERATOR, "source", "entity"))


class SourceColumns:
    """Per source, its accelerator columns, cached for per-tick readers (the hang watch);
    rebuilt when the registry holds another declaration under that name."""

    def __init__(self, registry: SourceRegistry | None = None) -> None:
        self._registry = registry
        self._cache: dict[str, tuple[SourceSpec | None, AcceleratorSource | None]] = {}
        self._lock = threading.Lock()

    def get(self, source: str) -> AcceleratorSource | None:
        spec = (self._registry or default_registry()).get(source)
        cached = self._cache.get(source)
        if cached is not None and cached[0] is spec:
            return cached[1]
        found = accelerator_source(spec) if spec is not None else None
        with self._lock:
            self._cache[source] = (spec, found)
        return found
