"""How catalog metrics become exported series: instrument names, units and attributes.

Everything here is derived from :data:`agent.catalog.CATALOG`; a metric added to the catalog is
exported without touching this module. Two name sets exist:

* ``otel`` (always): the catalog's ``otel_name`` + ``otel_attributes``; entities become
  attributes through their source's declared entity kinds (``EntityKind.otel_attributes``:
  ``cpu3`` → ``cpu.logical_number=3``, pid → ``process.pid``, an accelerator → ``hw.id``/
  ``hw.name``/``hw.type``...), never through a switch on the source's name.
* ``dcgm`` (opt-in): the catalog's ``dcgm_name`` with dcgm-exporter's units and labels
  (``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname``), for metrics that declare a
  ``dcgm_name``, on device and device-part entities only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.catalog import CATALOG, Catalog, Metric
from agent.registry import SourceRegistry, default_registry
from agent.source import EntityKind

AttrValue = str | int | float | bool
Attributes = dict[str, AttrValue]
EntityAttrs = Mapping[str, Mapping[str, Any]]

NAME_SETS = ("otel", "dcgm")
#: The attributes a per-process series may carry (besides its metric's own, e.g. ``cpu.mode``).
PROCESS_ATTRIBUTE_KEYS = frozenset(
    {"process.pid", "process.executable.name", "accelwatch.process.role"}
)


@dataclass(frozen=True)
class InstrumentSpec:
    """One exported instrument, fed by one or more catalog metrics."""

    name: str
    unit: str
    kind: str  # "gauge" | "counter"
    description: str
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    """Where one catalog metric's values go: an instrument, fixed attributes, a value transform."""

    instrument: str
    fixed_attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    scale: float = 1.0
    #: Export the per-second rate of a counter instead of its cumulative value.
    as_rate: bool = False
    #: Labels in dcgm-exporter style instead of OpenTelemetry attributes.
    dcgm: bool = False


@dataclass
class ExportPlan:
    """The instruments to create and, per catalog metric, the routes its values take."""

    instruments: dict[str, InstrumentSpec]
    routes: dict[str, list[Route]]
    catalog: Catalog = CATALOG


def build_plan(name_sets: Iterable[str] = ("otel",), catalog: Catalog = CATALOG) -> ExportPlan:
    """The export plan for the chosen name sets (``otel`` is always included)."""
    specs: dict[str, InstrumentSpec] = {}
    members: dict[str, list[Metric]] = {}
    routes: dict[str, list[Route]] = {}
    with_dcgm = "dcgm" in set(name_sets)
    for metric in catalog:
        spec = _otel_spec(metric, specs)
        wanted = [(spec, Route(spec.name, dict(metric.otel_attributes)))]
        if with_dcgm and metric.dcgm_name:
            wanted.append(_dcgm_route(metric))
        for spec, route in wanted:
            specs.setdefault(spec.name, spec)
            members.setdefault(spec.name, []).append(metric)
            routes.setdefault(metric.name, []).append(route)
    instruments = {
        name: InstrumentSpec(
            spec.name,
            spec.unit,
            spec.kind,
            _description(spec, members[name]),
            tuple(m.name for m in members[name]),
        )
        for name, spec in specs.items()
    }
    return ExportPlan(instruments, routes, catalog)


def _otel_spec(metric: Metric, known: Mapping[str, InstrumentSpec]) -> InstrumentSpec:
    """The metric's OpenTelemetry instrument; a clash of unit or kind falls back to its own name."""
    name = metric.otel_name
    existing = known.get(name)
    if existing is not None and (existing.unit, existing.kind) != (metric.unit, metric.kind):
        name = f"accelwatch.{metric.name}"
    return InstrumentSpec(name, metric.unit, metric.kind, metric.description)


def _description(spec: InstrumentSpec, metrics: list[Metric]) -> str:
    if len(metrics) == 1:
        return spec.description
    return f"accelwatch metrics {', '.join(m.name for m in metrics)} (told apart by attributes)."


# -- dcgm-exporter compatibility --------------------------------------------------------------
#: dcgm-exporter unit conventions, keyed by field-name pattern: (catalog unit, scale).
_DCGM_SCALES: tuple[tuple[re.Pattern[str], str, float], ...] = (
    (re.compile(r"^DCGM_FI_DEV_.*(UTIL|FAN_SPEED)$"), "1", 100.0),  # ratio → percent
    (re.compile(r"^DCGM_FI_DEV_FB_"), "By", 1.0 / 2**20),  # bytes → MiB
    (re.compile(r"^DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION$"), "J", 1000.0),  # J → mJ
)
#: dcgm-exporter publishes these byte counters as per-second rates.
_DCGM_RATES = re.compile(r"^DCGM_FI_PROF_(PCIE|NVLINK)_(TX|RX)_BYTES$")


def _dcgm_route(metric: Metric) -> tuple[InstrumentSpec, Route]:
    name = metric.dcgm_name or ""
    scale = 1.0
    for pattern, unit, factor in _DCGM_SCALES:
        if pattern.search(name) and metric.unit == unit:
            scale = factor
            break
    as_rate = metric.is_counter and bool(_DCGM_RATES.match(name))
    # dcgm-exporter names carry no unit suffix and are gauges, so the unit stays empty.
    spec = InstrumentSpec(name, "", "gauge", f"{metric.description} (dcgm-exporter field)")
    return spec, Route(name, {}, scale=scale, as_rate=as_rate, dcgm=True)


_DEVICE = re.compile(r"^[^/]*?(\d+)$")
_MIG_PROFILE = re.compile(r"\b(\d+g\.\d+gb)\b")
#: Entity kinds dcgm-exporter labels (only metrics declaring a ``dcgm_name`` reach them).
DCGM_KINDS = frozenset({"accelerator", "accelerator.part"})


def dcgm_labels(entity: str, entity_attrs: EntityAttrs, hostname: str) -> Attributes | None:
    """dcgm-exporter labels for a device (``gpu0``) or a part of one (``gpu0/mig1``); None for
    anything else (links, per-process entities)."""
    device, slash, child = entity.partition("/")
    found = _DEVICE.match(device)
    part = re.fullmatch(r"[a-z]+(\d+)", child) if slash else None
    if found is None or (slash and (part is None or not child.startswith("mig"))):
        return None
    index = int(found.group(1))
    attrs = entity_attrs.get(device, {})
    labels: Attributes = {
        "gpu": str(index),
        "UUID": str(attrs.get("uuid", device)),
        "device": f"nvidia{attrs.get('minor_number', index)}",
        "modelName": str(attrs.get("name", "")),
        "Hostname": hostname,
    }
    if attrs.get("pci_bus_id"):
        labels["pci_bus_id"] = str(attrs["pci_bus_id"])
    if part is not None:  # a MIG instance: dcgm-exporter's GPU instance labels
        mig = entity_attrs.get(entity, {})
        instance = mig.get("gpu_instance_id")
        labels["GPU_I_ID"] = str(part.group(1) if instance is None else instance)
        profile = _MIG_PROFILE.search(str(mig.get("name", "")))
        if profile:
            labels["GPU_I_PROFILE"] = profile.group(1)
    return labels


# -- OpenTelemetry attributes per entity kind ------------------------------------------------
@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def entity_kind(
    source: str, entity: str, registry: SourceRegistry | None = None
) -> EntityKind | None:
    """The declared kind of ``entity`` of ``source`` (its first matching pattern), or None."""
    spec = (registry or default_registry()).get(source)
    if spec is None:
        return None
    for kind in spec.entity_kinds:
        if _compiled(kind.pattern).fullmatch(entity):
            return kind
    return None


def entity_attributes(
    source: str, entity: str, entity_attrs: EntityAttrs, registry: SourceRegistry | None = None
) -> Attributes | None:
    """OpenTelemetry attributes that identify ``entity`` of ``source`` (None: do not export).

    They come from the source's declared entity kinds (``EntityKind.otel_attributes``); a child
    entity (``gpu0/nvlink3``) carries its parent's attributes too, and a child that is a device
    of its own (a MIG instance) names its parent in ``hw.parent``. An entity no kind matches is
    exported with ``accelwatch.entity``.
    """
    kind = entity_kind(source, entity, registry)
    if kind is None:
        return {} if entity in ("", "host") else {"accelwatch.entity": entity}
    own = _filled(kind, entity, entity_attrs)
    parent_name, slash, _child = entity.partition("/")
    if not slash:
        return own
    parent_kind = entity_kind(source, parent_name, registry)
    if parent_kind is None:
        return own
    parent = _filled(parent_kind, parent_name, entity_attrs)
    if "hw.id" in own and own["hw.id"] == entity and "hw.id" in parent:
        own["hw.id"] = f"{parent['hw.id']}/{_child}"  # a part without its own id
    if "hw.id" in own and "hw.id" in parent and own["hw.id"] != parent["hw.id"]:
        own["hw.parent"] = parent["hw.id"]
    return {**parent, **own}


def _filled(kind: EntityKind, entity: str, entity_attrs: EntityAttrs) -> Attributes:
    out: Attributes = {
        key: value if isinstance(value, (int, float, bool)) else str(value)
        for key, value in kind.attributes(entity, entity_attrs.get(entity, {})).items()
        if value not in (None, "")
    }
    if "hw.id" in kind.otel_attributes and "hw.id" not in out:
        out["hw.id"] = entity  # a device that did not describe its id is still one series
    return out


def process_of(source: str, entity: str, registry: SourceRegistry | None = None) -> int | None:
    """The pid a per-process series belongs to (kinds ``process`` and ``accelerator.process``)."""
    kind = entity_kind(source, entity, registry)
    if kind is None or kind.kind not in ("process", "accelerator.process"):
        return None
    pid = kind.attributes(entity).get("process.pid")
    return pid if isinstance(pid, int) else None
