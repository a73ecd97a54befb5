"""One GPU (or MIG device) as NVML sees it: its identity and the queries that read it.

:func:`gpu_queries` lists every per-tick reading of a full GPU as :class:`Query` objects
(fetch + emit); :class:`Device` keeps the ones the probe bound, plus the per-device state
(counters, GPM samples, processes) those queries update.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pynvml

from agent.catalog.gpu import CLOCK_EVENT_FLAGS
from agent.model import BatchBuilder
from collectors import nvml_calls
from collectors.nvml_calls import Getter
from collectors.nvml_counters import CounterTrack
from collectors.nvml_field_scalars import MAX_ENERGY_RATE_W
from collectors.nvml_fields import FieldReader
from collectors.nvml_gpm import GpmReader
from collectors.nvml_probe import BoundQuery, Notice, Query, Variant, probe, query
from collectors.nvml_processes import JobView, ProcessReader

_CLOCK_EVENT_METRICS = tuple(
    (f"gpu.clock_event.{flag}", bit) for flag, bit in CLOCK_EVENT_FLAGS.items()
)
_CLOCK_EVENT_ROW = ("gpu.clock_events", *(metric for metric, _ in _CLOCK_EVENT_METRICS))
_BITS = tuple(bit for _, bit in _CLOCK_EVENT_METRICS)
_ECC_COUNTERS = (
    (
        "gpu.ecc.volatile.corrected",
        pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
        pynvml.NVML_VOLATILE_ECC,
    ),
    (
        "gpu.ecc.volatile.uncorrected",
        pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        pynvml.NVML_VOLATILE_ECC,
    ),
    (
        "gpu.ecc.aggregate.corrected",
        pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
        pynvml.NVML_AGGREGATE_ECC,
    ),
    (
        "gpu.ecc.aggregate.uncorrected",
        pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        pynvml.NVML_AGGREGATE_ECC,
    ),
)


def text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


@dataclass(eq=False)
class Device:
    """A probed device: entity name, handle, bound queries and identity attributes."""

    entity: str
    handle: Any
    attrs: dict[str, Any]
    queries: list[BoundQuery] = field(default_factory=list)
    processes: ProcessReader | None = None
    gpm: GpmReader | None = None
    children: list[Device] = field(default_factory=list)
    lost: bool = False
    #: The job has had a process on this device (or one of its MIG devices) during the run.
    used_by_job: bool = False
    described: dict[str, Any] | None = None  # attributes last sent to the store

    def note_job_use(self) -> None:
        """After a tick's process query: mark the device once the job has used it (sticky)."""
        for child in self.children:
            child.note_job_use()
        own = bool(self.processes and self.processes.job_processes)
        self.used_by_job = self.used_by_job or own or any(c.used_by_job for c in self.children)

    def describe_if_changed(self, b: BatchBuilder) -> None:
        attrs = {**self.attrs, "used_by_job": self.used_by_job}
        if attrs != self.described:
            b.describe(self.entity, **attrs)
            self.described = attrs
        for child in self.children:
            child.describe_if_changed(b)

    def reread_static(self) -> None:
        """After an XID (a reset, a recovered fault) the limits read once may differ: ask the
        driver again at the next tick, once."""
        for bound_query in self.queries:
            if isinstance(bound_query.fetch, _Once):
                bound_query.fetch.done = False

    def close(self) -> None:
        if self.gpm is not None:
            self.gpm.close()
        for child in self.children:
            child.close()


# -- emitters: NVML result -> catalog metrics --------------------------------------------------
# Emitters whose values are always there add one row (a few list extends, not a call per value).
_UTILIZATION_ROW = ("gpu.utilization", "gpu.memory.utilization")
_MEMORY_ROW = ("gpu.memory.used", "gpu.memory.total", "gpu.memory.free")


def _emit_utilization(e: str, b: BatchBuilder, u: tuple[int, int]) -> None:
    gpu, memory = u
    b.add_row(e, _UTILIZATION_ROW, [gpu / 100.0, memory / 100.0])


def _emit_memory(e: str, b: BatchBuilder, m: tuple[int, int, int]) -> None:
    total, free, used = m
    b.add_row(e, _MEMORY_ROW, [float(used), float(total), float(free)])


def _emit_scaled(e: str, metric: str, scale: float, b: BatchBuilder, value: float) -> None:
    b.add(e, metric, value * scale)


def _emit_clock_events(e: str, b: BatchBuilder, mask: int) -> None:
    b.add_row(e, _CLOCK_EVENT_ROW, [float(mask), *[1.0 if mask & bit else 0.0 for bit in _BITS]])


def _ecc_counts(h: Any) -> tuple[int, ...]:
    """Volatile and aggregate, corrected and uncorrected: supported (or not) together."""
    return tuple(
        pynvml.nvmlDeviceGetTotalEccErrors(h, error_type, counter_type)
        for _, error_type, counter_type in _ECC_COUNTERS
    )


def _emit_ecc(e: str, b: BatchBuilder, counts: tuple[int, ...]) -> None:
    for (metric, _, _), count in zip(_ECC_COUNTERS, counts):
        b.add(e, metric, count)


def _emit_remapped_rows(e: str, b: BatchBuilder, rows: tuple[int, int, int, int]) -> None:
    correctable, uncorrectable, pending, failure = rows
    b.add(e, "gpu.remapped_rows.correctable", correctable)
    b.add(e, "gpu.remapped_rows.uncorrectable", uncorrectable)
    b.add(e, "gpu.remapped_rows.pending", 1 if pending else 0)
    b.add(e, "gpu.remapped_rows.failure", 1 if failure else 0)


def _emit_energy(e: str, track: CounterTrack, b: BatchBuilder, millijoules: int) -> None:
    track.update(millijoules, int(b.ts * 1e6))
    b.add(e, "gpu.energy", track.total)


def _scalar(name: str, function: str, fetch: Any, e: str, metric: str, scale: float = 1.0) -> Query:
    return query(name, function, fetch, partial(_emit_scaled, e, metric, scale))


def gpu_queries(h: Any, e: str) -> list[Query]:
    """Every per-tick reading of a full GPU except fields, GPM and processes; those the
    device's field request answers (``FieldReader.covered``) are dropped by the probe."""
    nv = pynvml
    energy = CounterTrack(scale=0.001, max_rate=MAX_ENERGY_RATE_W)
    return [
        *usage_queries(h, e),
        _scalar(
            "temperature",
            "nvmlDeviceGetTemperature",
            Getter("nvmlDeviceGetTemperature", h, ctypes.c_uint(nv.NVML_TEMPERATURE_GPU)),
            e,
            "gpu.temperature",
        ),
        _scalar(
            "power",
            "nvmlDeviceGetPowerUsage",
            Getter("nvmlDeviceGetPowerUsage", h),
            e,
            "gpu.power",
            0.001,
        ),
        _scalar(
            "power limit",
            "nvmlDeviceGetEnforcedPowerLimit",
            Getter("nvmlDeviceGetEnforcedPowerLimit", h),
            e,
            "gpu.power.limit",
            0.001,
        ),
        query(
            "energy",
            "nvmlDeviceGetTotalEnergyConsumption",
            Getter("nvmlDeviceGetTotalEnergyConsumption", h, out=ctypes.c_uint64()),
            partial(_emit_energy, e, energy),
        ),
        _scalar(
            "fan speed",
            "nvmlDeviceGetFanSpeed",
            Getter("nvmlDeviceGetFanSpeed", h),
            e,
            "gpu.fan.speed",
            0.01,
        ),
        _scalar(
            "sm clock",
            "nvmlDeviceGetClockInfo",
            Getter("nvmlDeviceGetClockInfo", h, ctypes.c_uint(nv.NVML_CLOCK_SM)),
            e,
            "gpu.clock.sm",
        ),
        _scalar(
            "memory clock",
            "nvmlDeviceGetClockInfo",
            Getter("nvmlDeviceGetClockInfo", h, ctypes.c_uint(nv.NVML_CLOCK_MEM)),
            e,
            "gpu.clock.memory",
        ),
        _scalar(
            "pstate",
            "nvmlDeviceGetPerformanceState",
            Getter("nvmlDeviceGetPerformanceState", h),
            e,
            "gpu.pstate",
        ),
        Query(
            "clock events",
            tuple(
                Variant(
                    name, Getter(name, h, out=ctypes.c_ulonglong()), partial(_emit_clock_events, e)
                )
                for name in (
                    "nvmlDeviceGetCurrentClocksEventReasons",
                    "nvmlDeviceGetCurrentClocksThrottleReasons",
                )
            ),
        ),
        _scalar(
            "pcie link generation",
            "nvmlDeviceGetCurrPcieLinkGeneration",
            Getter("nvmlDeviceGetCurrPcieLinkGeneration", h),
            e,
            "gpu.pcie.link.gen",
        ),
        _scalar(
            "pcie link width",
            "nvmlDeviceGetCurrPcieLinkWidth",
            Getter("nvmlDeviceGetCurrPcieLinkWidth", h),
            e,
            "gpu.pcie.link.width",
        ),
        _scalar(
            "pcie replays",
            "nvmlDeviceGetPcieReplayCounter",
            Getter("nvmlDeviceGetPcieReplayCounter", h),
            e,
            "gpu.pcie.replays",
        ),
        query("ecc", "nvmlDeviceGetTotalEccErrors", partial(_ecc_counts, h), partial(_emit_ecc, e)),
        query(
            "remapped rows",
            "nvmlDeviceGetRemappedRows",
            partial(nv.nvmlDeviceGetRemappedRows, h),
            partial(_emit_remapped_rows, e),
        ),
    ]


def usage_queries(h: Any, e: str) -> list[Query]:
    """Utilization and memory: what both full GPUs and MIG devices may answer."""
    return [
        query(
            "utilization",
            "nvmlDeviceGetUtilizationRates",
            nvml_calls.utilization(h),
            partial(_emit_utilization, e),
        ),
        Query(
            "memory",
            (
                Variant(
                    "nvmlDeviceGetMemoryInfo_v2",
                    nvml_calls.memory(h, v2=True),
                    partial(_emit_memory, e),
                ),
                Variant(
                    "nvmlDeviceGetMemoryInfo",
                    nvml_calls.memory(h, v2=False),
                    partial(_emit_memory, e),
                ),
            ),
        ),
    ]


def static_queries(h: Any, e: str) -> list[Query]:
    """Limits that do not change while the GPU runs: read once at probe time (and again after
    an XID: :meth:`Device.reread_static`), re-emitted every tick for free."""
    nv = pynvml
    specs = [
        (
            "max sm clock",
            "nvmlDeviceGetMaxClockInfo",
            partial(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
            "gpu.clock.sm.max",
        ),
        (
            "max memory clock",
            "nvmlDeviceGetMaxClockInfo",
            partial(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_MEM),
            "gpu.clock.memory.max",
        ),
        (
            "max pcie link generation",
            "nvmlDeviceGetMaxPcieLinkGeneration",
            partial(nv.nvmlDeviceGetMaxPcieLinkGeneration, h),
            "gpu.pcie.link.gen.max",
        ),
        (
            "max pcie link width",
            "nvmlDeviceGetMaxPcieLinkWidth",
            partial(nv.nvmlDeviceGetMaxPcieLinkWidth, h),
            "gpu.pcie.link.width.max",
        ),
    ]
    return [
        query(name, function, _Once(fetch), partial(_emit_scaled, e, metric, 1.0))
        for name, function, fetch, metric in specs
    ]


class _Once:
    """A fetch that calls NVML the first time and returns that answer ever after."""

    __slots__ = ("fetch", "value", "done")

    def __init__(self, fetch: Any) -> None:
        self.fetch = fetch
        self.done = False
        self.value: Any = None

    def __call__(self) -> Any:
        if not self.done:
            self.value = self.fetch()
            self.done = True
        return self.value


def gpu_identity(h: Any, index: int) -> dict[str, Any]:
    """Name, UUID, PCI bus id and memory size: the ``entities`` attributes of a GPU."""
    pci = pynvml.nvmlDeviceGetPciInfo(h)
    attrs: dict[str, Any] = {
        "index": index,
        "name": text(pynvml.nvmlDeviceGetName(h)),
        "uuid": text(pynvml.nvmlDeviceGetUUID(h)),
        "pci_bus_id": text(pci.busId),
        "memory_total": _optional(partial(pynvml.nvmlDeviceGetMemoryInfo, h), "total"),
    }
    return attrs


def _optional(fetch: Any, attr: str | None = None) -> Any:
    """An identity detail, or None where the device cannot tell (a lost GPU still raises)."""
    try:
        value = fetch()
    except pynvml.NVMLError_GpuIsLost:
        raise
    except pynvml.NVMLError:
        return None
    return value if attr is None else getattr(value, attr)


def probe_gpu(h: Any, index: int, job: JobView) -> tuple[Device, list[Notice]]:
    """Identity plus every query this GPU answers (GPU_IS_LOST propagates)."""
    e = f"gpu{index}"
    device = Device(e, h, gpu_identity(h, index))
    fields = FieldReader(h, e)
    field_queries, notices = fields.probe()
    device.gpm = GpmReader(h, e)
    gpm_queries, gpm_notices = device.gpm.probe()
    device.processes = ProcessReader(h, e, job)
    candidates = [
        *(q for q in gpu_queries(h, e) if q.name not in fields.covered),
        *static_queries(h, e),
        *field_queries,
        *gpm_queries,
        *device.processes.queries(),
    ]
    device.queries, probe_notices = probe(e, candidates)
    device.attrs["nvlinks"] = fields.link_count
    device.attrs["gpm"] = bool(gpm_queries)
    return device, [*notices, *gpm_notices, *probe_notices]


def probe_mig_devices(parent: Device, job: JobView) -> tuple[list[Device], list[Notice]]:
    """MIG devices of a GPU in MIG mode (none otherwise), each with what it answers.

    A MIG device reports memory, the job's processes on it and (where the driver offers
    it, usually not) utilization; per-process memory is recorded once, on the parent GPU.
    """
    h = parent.handle
    try:
        enabled = pynvml.nvmlDeviceGetMigMode(h)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
    except pynvml.NVMLError_GpuIsLost:
        raise
    except pynvml.NVMLError:
        enabled = False  # not MIG capable, or a driver without MIG
    parent.attrs["mig"] = enabled
    if not enabled:
        return [], []
    devices: list[Device] = []
    notices: list[Notice] = []
    for index in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, index)
        except pynvml.NVMLError_NotFound:
            continue
        except pynvml.NVMLError_InvalidArgument:
            break
        e = f"{parent.entity}/mig{index}"
        attrs = {
            "parent": parent.entity,
            "name": text(pynvml.nvmlDeviceGetName(mh)),
            "uuid": text(pynvml.nvmlDeviceGetUUID(mh)),
            "gpu_instance_id": _optional(partial(pynvml.nvmlDeviceGetGpuInstanceId, mh)),
            "compute_instance_id": _optional(partial(pynvml.nvmlDeviceGetComputeInstanceId, mh)),
            "memory_total": _optional(partial(pynvml.nvmlDeviceGetMemoryInfo, mh), "total"),
        }
        device = Device(e, mh, attrs)
        device.processes = ProcessReader(mh, e, job, per_process=False)
        device.queries, found = probe(e, [*usage_queries(mh, e), device.processes.process_query()])
        devices.append(device)
        notices.extend(found)
    return devices, notices
