"""How catalog metrics become exported series: instrument names, units and attributes.

Everything here is derived from :data:`agent.catalog.CATALOG`; a metric added to the catalog is
exported without touching this module. Two name sets exist:

* ``otel`` (always): the catalog's ``otel_name`` + ``otel_attributes``; entities become
  attributes per source (``cpu3`` → ``cpu.logical_number=3``, pid → ``process.pid``, ``gpu0`` →
  ``hw.id``/``hw.name``/``hw.vendor``/``hw.type``).
* ``dcgm`` (opt-in): the catalog's ``dcgm_name`` with dcgm-exporter's units and labels
  (``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname``), for GPU and MIG entities only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.catalog import CATALOG, Catalog, Metric

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


_GPU = re.compile(r"^gpu(\d+)$")
_GPU_CHILD = re.compile(r"^gpu(\d+)/(mig|nvlink|pid)(\d+)$")
_MIG_PROFILE = re.compile(r"\b(\d+g\.\d+gb)\b")


def dcgm_labels(entity: str, entity_attrs: EntityAttrs, hostname: str) -> Attributes | None:
    """dcgm-exporter labels for a GPU or MIG entity; None for entities dcgm does not export."""
    gpu = _GPU.match(entity)
    child = _GPU_CHILD.match(entity)
    if gpu is None and (child is None or child.group(2) != "mig"):
        return None
    index = int((gpu or child).group(1))  # type: ignore[union-attr]
    attrs = entity_attrs.get(f"gpu{index}", {})
    labels: Attributes = {
        "gpu": str(index),
        "UUID": str(attrs.get("uuid", f"gpu{index}")),
        "device": f"nvidia{attrs.get('minor_number', index)}",
        "modelName": str(attrs.get("name", "")),
        "Hostname": hostname,
    }
    if attrs.get("pci_bus_id"):
        labels["pci_bus_id"] = str(attrs["pci_bus_id"])
    if child is not None:  # a MIG instance: dcgm-exporter's GPU instance labels
        mig = entity_attrs.get(entity, {})
        instance = mig.get("gpu_instance_id")
        labels["GPU_I_ID"] = str(child.group(3) if instance is None else instance)
        profile = _MIG_PROFILE.search(str(mig.get("name", "")))
        if profile:
            labels["GPU_I_PROFILE"] = profile.group(1)
    return labels


# -- OpenTelemetry attributes per source -----------------------------------------------------
def _host_attributes(entity: str, _attrs: EntityAttrs) -> Attributes | None:
    if entity == "host":
        return {}
    if entity.startswith("cpu") and entity[3:].isdigit():
        return {"cpu.logical_number": int(entity[3:])}
    kind, sep, name = entity.partition(":")
    if not sep:
        return {"accelwatch.entity": entity}
    if kind == "net":
        return {"network.interface.name": name}
    return {"system.device": name}  # disk:sda, ib:mlx5_0/1


def _process_attributes(entity: str, attrs: EntityAttrs) -> Attributes | None:
    if not entity.isdigit():
        return {"accelwatch.entity": entity}
    out: Attributes = {"process.pid": int(entity)}
    described = attrs.get(entity, {})
    if described.get("name"):
        out["process.executable.name"] = str(described["name"])
    if described.get("role"):
        out["accelwatch.process.role"] = str(described["role"])
    return out


def _gpu_identity(index: str, attrs: EntityAttrs) -> Attributes:
    described = attrs.get(f"gpu{index}", {})
    out: Attributes = {
        "hw.id": str(described.get("uuid") or f"gpu{index}"),
        "hw.type": "gpu",
        "hw.vendor": str(described.get("vendor", "NVIDIA")),
    }
    if described.get("name"):
        out["hw.name"] = str(described["name"])
    return out


def _nvml_attributes(entity: str, attrs: EntityAttrs) -> Attributes | None:
    gpu = _GPU.match(entity)
    if gpu is not None:
        return _gpu_identity(gpu.group(1), attrs)
    child = _GPU_CHILD.match(entity)
    if child is None:
        return {"accelwatch.entity": entity}
    index, kind, number = child.groups()
    out = _gpu_identity(index, attrs)
    if kind == "pid":
        out["process.pid"] = int(number)
    elif kind == "nvlink":
        out["accelwatch.gpu.nvlink"] = int(number)
    else:  # a MIG instance is a device of its own whose parent is the GPU
        described = attrs.get(entity, {})
        out["hw.parent"] = out["hw.id"]
        out["hw.id"] = str(described.get("uuid") or f"{out['hw.id']}/mig{number}")
        if described.get("name"):
            out["hw.name"] = str(described["name"])
    return out


def _generic_attributes(entity: str, _attrs: EntityAttrs) -> Attributes | None:
    return {} if entity in ("", "host") else {"accelwatch.entity": entity}


_BY_SOURCE: dict[str, Callable[[str, EntityAttrs], Attributes | None]] = {
    "host": _host_attributes,
    "disk": _host_attributes,  # disk:sda → system.device, as when disks were the host's
    "fabric": _host_attributes,  # ib:mlx5_0/1 → system.device
    "process": _process_attributes,
    "nvml": _nvml_attributes,
}


def entity_attributes(source: str, entity: str, entity_attrs: EntityAttrs) -> Attributes | None:
    """OpenTelemetry attributes that identify ``entity`` of ``source`` (None: do not export)."""
    return _BY_SOURCE.get(source, _generic_attributes)(entity, entity_attrs)


def process_of(source: str, entity: str) -> int | None:
    """The pid a per-process series belongs to (process entities and ``gpuN/pidP``), else None."""
    if source == "process":
        return int(entity) if entity.isdigit() else None
    child = _GPU_CHILD.match(entity)
    if child is not None and child.group(2) == "pid":
        return int(child.group(3))
    return None
