"""Field-value readings: PCIe and NVLink byte counters, instant power, NVLink link state.

All of them come from one ``nvmlDeviceGetFieldValues`` call per device and tick. Each
field carries the driver's own timestamp, so rates use the time between the two driver
samples rather than between our polls (which jitter). Fields a device does not support are
dropped at probe time per group, with one notice each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pynvml

from agent.model import BatchBuilder
from collectors.nvml_counters import CounterTrack
from collectors.nvml_probe import Notice, Query, query

KIB = 1024
#: Plausibility bounds for counter steps (catalog units per second), far above any real link.
MAX_PCIE_RATE = 1e12
MAX_NVLINK_LINK_RATE = 1e12

_VALUE_GETTERS: dict[int, Callable[[pynvml.c_nvmlValue_t], float | int]] = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: lambda v: v.dVal,
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: lambda v: v.uiVal,
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: lambda v: v.ulVal,
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: lambda v: v.ullVal,
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: lambda v: v.sllVal,
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: lambda v: v.siVal,
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: lambda v: v.usVal,
}


def field_value(fv: pynvml.c_nvmlFieldValue_t) -> float | int:
    """The value of one field, read from the union member its ``valueType`` names."""
    return _VALUE_GETTERS.get(fv.valueType, _VALUE_GETTERS[pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG])(fv.value)


@dataclass(frozen=True, slots=True)
class FieldGroup:
    """Fields that are supported or not together, e.g. every link's NVLink TX counter."""

    name: str
    fields: tuple[tuple[int, int], ...]  # (field id, scope id)


class FieldReader:
    """Builds the device's field-value query from the groups that answered the probe."""

    def __init__(self, handle: pynvml.c_nvmlDevice_t, entity: str) -> None:
        self.handle = handle
        self.entity = entity
        self.link_count = 0

    def groups(self) -> list[FieldGroup]:
        links = range(self.link_count)
        groups = [
            FieldGroup("pcie byte counters", ((pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, 0),
                                              (pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES, 0))),
            FieldGroup("instant power", ((pynvml.NVML_FI_DEV_POWER_INSTANT, 0),)),
        ]
        if self.link_count:
            groups += [
                FieldGroup("nvlink throughput counters", tuple(
                    (fid, link) for link in links
                    for fid in (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                                pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX))),
                FieldGroup("nvlink link state", tuple(
                    (pynvml.NVML_FI_DEV_NVLINK_GET_STATE, link) for link in links)),
            ]
        return groups

    def probe(self) -> tuple[list[Query], list[Notice]]:
        """Find the link count and which groups answer; one query over all that do."""
        try:
            (count,) = pynvml.nvmlDeviceGetFieldValues(
                self.handle, [pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT])
            self.link_count = int(field_value(count)) if count.nvmlReturn == pynvml.NVML_SUCCESS else 0
        except pynvml.NVMLError_GpuIsLost:
            raise
        except pynvml.NVMLError as exc:
            return [], [Notice(self.entity, {
                "query": "field values", "functions": ["nvmlDeviceGetFieldValues"],
                "reason": str(exc),
                "message": f"field values unavailable on {self.entity} ({exc}): no PCIe/NVLink "
                           "counters or instant power",
            })]
        groups = self.groups()
        ids = [f for g in groups for f in g.fields]
        values = pynvml.nvmlDeviceGetFieldValues(self.handle, ids)
        status = {f: values[i].nvmlReturn for i, f in enumerate(ids)}
        supported: list[FieldGroup] = []
        notices: list[Notice] = []
        for group in groups:
            failing = [status[f] for f in group.fields if status[f] != pynvml.NVML_SUCCESS]
            if not failing:
                supported.append(group)
                continue
            reason = pynvml.NVMLError(failing[0]).__str__()
            notices.append(Notice(self.entity, {
                "query": group.name, "functions": ["nvmlDeviceGetFieldValues"], "reason": reason,
                "message": f"{group.name} {reason.lower()} on {self.entity}; not recorded",
            }))
        if not supported:
            return [], notices
        return [self._query(supported)], notices

    def _query(self, groups: list[FieldGroup]) -> Query:
        ids = [f for group in groups for f in group.fields]
        counters: list[tuple[int, str, str, str, CounterTrack]] = []  # slot, entity, metrics
        power_slots: list[int] = []
        state_slots: list[int] = []
        link_tracks: dict[str, list[CounterTrack]] = {"tx": [], "rx": []}
        e = self.entity
        for slot, (fid, scope) in enumerate(ids):
            if fid in _PCIE_FIELDS:
                d = _PCIE_FIELDS[fid]
                counters.append((slot, e, f"gpu.pcie.{d}_bytes", f"gpu.pcie.{d}_throughput",
                                 CounterTrack(scale=1.0, max_rate=MAX_PCIE_RATE)))
            elif fid in _NVLINK_FIELDS:
                d = _NVLINK_FIELDS[fid]
                track = CounterTrack(scale=KIB, max_rate=MAX_NVLINK_LINK_RATE)
                link_tracks[d].append(track)
                counters.append((slot, f"{e}/nvlink{scope}", f"gpu.nvlink.{d}_bytes",
                                 f"gpu.nvlink.{d}_throughput", track))
            elif fid == pynvml.NVML_FI_DEV_POWER_INSTANT:
                power_slots.append(slot)
            elif fid == pynvml.NVML_FI_DEV_NVLINK_GET_STATE:
                state_slots.append(slot)
        link_totals = [(d, tracks) for d, tracks in link_tracks.items() if tracks]
        handle = self.handle
        ok = pynvml.NVML_SUCCESS
        active = pynvml.NVML_NVLINK_STATE_ACTIVE

        def fetch():
            return pynvml.nvmlDeviceGetFieldValues(handle, ids)

        def emit(b: BatchBuilder, values) -> None:
            for slot, entity, total_metric, rate_metric, track in counters:
                fv = values[slot]
                if fv.nvmlReturn == ok:
                    track.update(field_value(fv), fv.timestamp)
                    b.add(entity, total_metric, track.total)
                    b.add(entity, rate_metric, track.rate)
                else:
                    track.rate = None
            for slot in power_slots:
                fv = values[slot]
                if fv.nvmlReturn == ok:
                    b.add(e, "gpu.power.instant", field_value(fv) / 1000.0)
            if state_slots:
                b.add(e, "gpu.nvlink.active_links", sum(
                    1 for slot in state_slots
                    if values[slot].nvmlReturn == ok and field_value(values[slot]) == active))
            for direction, tracks in link_totals:
                # GPU totals: the links' monotonic totals summed; a rate only when every link has one.
                b.add(e, f"gpu.nvlink.{direction}_bytes", sum(t.total for t in tracks))
                rates = [t.rate for t in tracks]
                if None not in rates:
                    b.add(e, f"gpu.nvlink.{direction}_throughput", sum(rates))

        return query("field values", "nvmlDeviceGetFieldValues", fetch, emit)


_PCIE_FIELDS = {pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: "tx", pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: "rx"}
_NVLINK_FIELDS = {pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: "tx",
                  pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: "rx"}
