"""Field-value readings: PCIe and NVLink byte counters, power, energy, ECC, remapped rows.

All of them come from one ``nvmlDeviceGetFieldValues`` call per device and tick, the way
DCGM reads a GPU: one driver call instead of one per reading. Each field carries the
driver's own timestamp, so rates use the time between the two driver samples rather than
between our polls (which jitter). Fields a device does not support are dropped at probe time
per group, with one notice each; a group that stands in for a direct call (power, energy,
PCIe replays, ECC, remapped rows: :data:`collectors.nvml_field_scalars.SCALAR_GROUPS`)
leaves that call to do the work instead (an older driver lacks the newer field ids).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pynvml

from agent.model import BatchBuilder
from collectors.nvml_counters import U32, U64, CounterTrack
from collectors.nvml_field_rows import KIND_DTYPE, ROW_DTYPE, CounterBlock
from collectors.nvml_field_scalars import ENERGY_FIELD, MAX_ENERGY_RATE_W, SCALAR_GROUPS
from collectors.nvml_probe import Notice, Query, query

KIB = 1024
#: Plausibility bounds for counter steps (catalog units per second), far above any real link.
MAX_PCIE_RATE = 1e12
MAX_NVLINK_LINK_RATE = 1e12

_FIELD_LAYOUT = (
    ("fieldId", "I"),
    ("scopeId", "I"),
    ("timestamp", "q"),
    ("latencyUsec", "q"),
    ("valueType", "I"),
    ("nvmlReturn", "I"),
    ("value", "Q"),
)


def _row_struct() -> struct.Struct:
    """A ``struct`` format matching ``c_nvmlFieldValue_t``'s memory layout (padding included)."""
    fmt, at = "=", 0
    for name, code in _FIELD_LAYOUT:
        offset = getattr(pynvml.c_nvmlFieldValue_t, name).offset
        fmt += "x" * (offset - at) + code
        at = offset + struct.calcsize("=" + code)
    fmt += "x" * (ctypes.sizeof(pynvml.c_nvmlFieldValue_t) - at)
    return struct.Struct(fmt)


_ROW = _row_struct()
#: Field row: (field id, scope id, timestamp µs, latency µs, value type, nvmlReturn, raw value).
FieldRow = tuple[int, int, int, int, int, int, int]
_U32, _U16 = 0xFFFFFFFF, 0xFFFF
_RAW_DECODERS: dict[int, Callable[[int], float | int]] = {
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: lambda raw: raw & _U32,
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: lambda raw: ((raw & _U32) ^ 0x80000000) - 0x80000000,
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: lambda raw: raw - (1 << 64) if raw >> 63 else raw,
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: lambda raw: raw & _U16,
    pynvml.NVML_VALUE_TYPE_DOUBLE: lambda raw: struct.unpack("=d", struct.pack("=Q", raw))[0],
}


def decode(value_type: int, raw: int) -> float | int:
    """The value of a field from the raw 8 bytes of its union, per its ``valueType``."""
    decoder = _RAW_DECODERS.get(value_type)
    return raw if decoder is None else decoder(raw)


class FieldRequest:
    """A reusable ``nvmlDeviceGetFieldValues`` request for a fixed list of fields.

    nvidia-ml-py's wrapper rebuilds the request array on every call and reading each result
    goes through its slow attribute hook; at dozens of fields per GPU per tick that is most
    of the collector's own cost. The array here is filled once (NVML writes only results)
    and the results are decoded in one pass with ``struct``.
    """

    def __init__(self, handle: Any, ids: Sequence[tuple[int, int]]) -> None:
        self.values = (pynvml.c_nvmlFieldValue_t * len(ids))()
        for slot, (field_id, scope_id) in zip(self.values, ids):
            slot.fieldId, slot.scopeId = field_id, scope_id
        self.args = (handle, ctypes.c_int32(len(ids)), ctypes.byref(self.values))
        self.view = memoryview(self.values).cast("B")
        #: The same memory as NumPy rows (:data:`ROW_DTYPE`): each call's results, no copy.
        self.array = np.frombuffer(self.values, dtype=ROW_DTYPE)

    def __call__(self) -> list[FieldRow]:
        self.fetch()
        return self.rows()

    def fetch(self) -> np.ndarray:
        """Ask the driver; the results are in :attr:`array` (valid until the next call)."""
        # nvidia-ml-py's own (cached) symbol lookup and error mapping, as its wrapper uses.
        fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")
        pynvml._nvmlCheckReturn(fn(*self.args))
        return self.array

    def rows(self) -> list[FieldRow]:
        """The last call's results as tuples (see :data:`FieldRow`)."""
        return list(_ROW.iter_unpack(self.view))


@dataclass(frozen=True, slots=True)
class FieldGroup:
    """Fields that are supported or not together, e.g. every link's NVLink TX counter."""

    name: str
    fields: tuple[tuple[int, int], ...]  # (field id, scope id)
    #: The direct query this group replaces when every field answers (else that query runs).
    replaces: str | None = None


class FieldReader:
    """Builds the device's field-value query from the groups that answered the probe."""

    def __init__(self, handle: pynvml.c_nvmlDevice_t, entity: str) -> None:
        self.handle = handle
        self.entity = entity
        self.link_count = 0
        #: Names of the direct queries the field request answers for this device.
        self.covered: set[str] = set()

    def groups(self) -> list[FieldGroup]:
        links = range(self.link_count)
        groups = [
            FieldGroup(name, tuple((s.field_id, 0) for s in scalars), replaces=name)
            for name, scalars in SCALAR_GROUPS
        ]
        groups += [
            FieldGroup(
                "pcie byte counters",
                (
                    (pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, 0),
                    (pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES, 0),
                ),
            ),
            FieldGroup("instant power", ((pynvml.NVML_FI_DEV_POWER_INSTANT, 0),)),
        ]
        if self.link_count:
            groups += [
                FieldGroup(
                    "nvlink throughput counters",
                    tuple(
                        (fid, link)
                        for link in links
                        for fid in (
                            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
                        )
                    ),
                ),
                FieldGroup(
                    "nvlink link state",
                    tuple((pynvml.NVML_FI_DEV_NVLINK_GET_STATE, link) for link in links),
                ),
            ]
        return groups

    def probe(self) -> tuple[list[Query], list[Notice]]:
        """Find the link count and which groups answer; one query over all that do."""
        try:
            notices = self._probe_links()
        except pynvml.NVMLError_GpuIsLost:
            raise
        except pynvml.NVMLError as exc:
            return [], [
                Notice(
                    self.entity,
                    {
                        "query": "field values",
                        "functions": ["nvmlDeviceGetFieldValues"],
                        "reason": str(exc),
                        "message": f"field values unavailable on {self.entity} ({exc}): no PCIe/NVLink "
                        "counters or instant power",
                    },
                )
            ]
        groups = self.groups()
        ids = [f for g in groups for f in g.fields]
        rows = FieldRequest(self.handle, ids)()
        status = {f: row[5] for f, row in zip(ids, rows)}
        supported: list[FieldGroup] = []
        for group in groups:
            failing = [status[f] for f in group.fields if status[f] != pynvml.NVML_SUCCESS]
            if not failing:
                supported.append(group)
                if group.replaces:
                    self.covered.add(group.replaces)
                continue
            if group.replaces:
                continue  # the direct query is probed instead, with its own notice if need be
            reason = str(pynvml.NVMLError(failing[0]))
            notices.append(
                Notice(
                    self.entity,
                    {
                        "query": group.name,
                        "functions": ["nvmlDeviceGetFieldValues"],
                        "reason": reason,
                        "message": f"{group.name} {reason.lower()} on {self.entity}; not recorded",
                    },
                )
            )
        if not supported:
            return [], notices
        return [self._query(supported)], notices

    def _probe_links(self) -> list[Notice]:
        """Set ``link_count``; a part without NVLink says so once."""
        (count,) = FieldRequest(self.handle, [(pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT, 0)])()
        if count[5] == pynvml.NVML_SUCCESS:
            self.link_count = int(decode(count[4], count[6]))
            return []
        self.link_count = 0
        reason = str(pynvml.NVMLError(count[5]))
        return [
            Notice(
                self.entity,
                {
                    "query": "nvlink",
                    "functions": ["nvmlDeviceGetFieldValues"],
                    "reason": reason,
                    "message": f"NVLink {reason.lower()} on {self.entity} (PCIe only); no NVLink metrics",
                },
            )
        ]

    def _query(self, groups: list[FieldGroup]) -> Query:
        ids = [f for group in groups for f in group.fields]
        counters: list[tuple[int, str, str, str, CounterTrack]] = []  # slot, entity, metrics
        power_slots: list[int] = []
        state_slots: list[int] = []
        scalar_slots: list[tuple[int, str, float, bool]] = []  # slot, metric, scale, flag
        scalars = {s.field_id: s for _, group in SCALAR_GROUPS for s in group}
        energy_slots: list[int] = []
        energy = CounterTrack(scale=0.001, max_rate=MAX_ENERGY_RATE_W)
        link_tracks: dict[str, list[CounterTrack]] = {"tx": [], "rx": []}
        e = self.entity
        for slot, (fid, scope) in enumerate(ids):
            if fid in _PCIE_FIELDS:
                d = _PCIE_FIELDS[fid]
                counters.append(
                    (
                        slot,
                        e,
                        f"gpu.pcie.{d}_bytes",
                        f"gpu.pcie.{d}_throughput",
                        CounterTrack(scale=1.0, max_rate=MAX_PCIE_RATE),
                    )
                )
            elif fid in _NVLINK_FIELDS:
                d = _NVLINK_FIELDS[fid]
                # KiB derived from a 64-bit byte counter wrap at 2**54; a step taken modulo
                # 2**54 is also right for a counter kept in 64-bit KiB (steps are far smaller).
                track = CounterTrack(scale=KIB, max_rate=MAX_NVLINK_LINK_RATE, modulus=U64 // KIB)
                link_tracks[d].append(track)
                counters.append(
                    (
                        slot,
                        f"{e}/nvlink{scope}",
                        f"gpu.nvlink.{d}_bytes",
                        f"gpu.nvlink.{d}_throughput",
                        track,
                    )
                )
            elif fid == pynvml.NVML_FI_DEV_POWER_INSTANT:
                power_slots.append(slot)
            elif fid == pynvml.NVML_FI_DEV_NVLINK_GET_STATE:
                state_slots.append(slot)
            elif fid == ENERGY_FIELD:
                energy_slots.append(slot)
            elif fid in scalars:
                s = scalars[fid]
                scalar_slots.append((slot, s.metric, s.scale, s.flag))
        link_totals = [(d, tracks) for d, tracks in link_tracks.items() if tracks]
        ok = pynvml.NVML_SUCCESS
        active = pynvml.NVML_NVLINK_STATE_ACTIVE
        ull = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG

        def slow_emit(b: BatchBuilder, rows: list[FieldRow]) -> None:
            # Any tick but the common one (see emit): each row and counter on its own, columns
            # appended in one go, without the per-value calls of ``BatchBuilder.add``.
            entities: list[str] = []
            metrics: list[str] = []
            values: list[float] = []
            for slot, metric, scale, flag in scalar_slots:
                _, _, _, _, value_type, ret, raw = rows[slot]
                if ret != ok:
                    continue
                value = raw if value_type == ull else decode(value_type, raw)
                entities.append(e)
                metrics.append(metric)
                values.append((1.0 if value else 0.0) if flag else float(value * scale))
            for slot in energy_slots:  # stepped on the tick's time, as the direct call was
                _, _, _, _, value_type, ret, raw = rows[slot]
                if ret == ok:
                    energy.update(int(decode(value_type, raw)), int(b.ts * 1e6))
                    entities.append(e)
                    metrics.append("gpu.energy")
                    values.append(energy.total)
            for slot, entity, total_metric, rate_metric, track in counters:
                _, _, ts, _, value_type, ret, raw = rows[slot]
                if ret != ok:
                    track.rate = None
                    continue
                if value_type != ull:  # a narrower counter wraps at its own width
                    raw = decode(value_type, raw)
                    track.modulus = _COUNTER_WIDTHS.get(value_type, U64)
                previous, previous_ts = track.raw, track.ts_us
                if previous is not None and ts > previous_ts:
                    # CounterTrack.update's common case inlined (a fresh driver sample, no
                    # reset), the same arithmetic: two calls fewer for each of ~300 counters.
                    step = (raw - previous) % track.modulus
                    elapsed = (ts - previous_ts) / 1e6
                    delta = step * track.scale
                    if delta <= track.max_rate * max(elapsed, 1.0):
                        track.raw, track.ts_us = raw, ts
                        track.raw_total += step
                        track.rate = rate = delta / elapsed
                        entities += (entity, entity)
                        metrics += (total_metric, rate_metric)
                        values += (track.raw_total * track.scale, rate)
                        continue
                rate = track.update(raw, ts)
                if rate is None:
                    entities.append(entity)
                    metrics.append(total_metric)
                    values.append(track.raw_total * track.scale)
                else:
                    entities += (entity, entity)
                    metrics += (total_metric, rate_metric)
                    values += (track.raw_total * track.scale, rate)
            b.add_columns(entities, metrics, values)
            for slot in power_slots:
                row = rows[slot]
                if row[5] == ok:
                    b.add(e, "gpu.power.instant", decode(row[4], row[6]) / 1000.0)
            if state_slots:
                b.add(
                    e,
                    "gpu.nvlink.active_links",
                    sum(
                        1
                        for slot in state_slots
                        if rows[slot][5] == ok and decode(rows[slot][4], rows[slot][6]) == active
                    ),
                )
            for direction, tracks in link_totals:
                # GPU totals: the links' monotonic totals summed; a rate only when every link has one.
                b.add(
                    e, f"gpu.nvlink.{direction}_bytes", sum([t.raw_total * t.scale for t in tracks])
                )
                rates = [t.rate for t in tracks]
                if None not in rates:
                    b.add(e, f"gpu.nvlink.{direction}_throughput", sum(rates))

        request = FieldRequest(self.handle, ids)
        block = CounterBlock([c[0] for c in counters], [c[4] for c in counters])
        # The common tick's columns, built once: every scalar, energy, each counter's total
        # and rate, instant power, the active links and the GPU's link totals and rates.
        columns = (
            [(e, metric) for _, metric, _, _ in scalar_slots]
            + [(e, "gpu.energy")] * len(energy_slots)
            + [(c[1], m) for c in counters for m in (c[2], c[3])]
            + [(e, "gpu.power.instant")] * len(power_slots)
            + ([(e, "gpu.nvlink.active_links")] if state_slots else [])
            + [
                (e, f"gpu.nvlink.{d}_{kind}")
                for d, _ in link_totals
                for kind in ("bytes", "throughput")
            ]
        )
        fast_entities = [entity for entity, _ in columns]
        fast_metrics = [metric for _, metric in columns]
        track_at = {id(c[4]): i for i, c in enumerate(counters)}
        link_at = [[track_at[id(t)] for t in tracks] for _, tracks in link_totals]
        raw_column = request.array["value"]
        ts_column = request.array["timestamp"]
        kind_column = np.frombuffer(request.values, dtype=KIND_DTYPE)["kind"]
        counter_slots = {c[0] for c in counters}
        pair_count = 2 * len(counters)
        #: The kinds (value type, return) of the rows the fast path was set up for, and the
        #: value types it decodes by; None until a tick where every field answered and every
        #: counter came as a 64-bit value.
        learned: list = [None, (), (), (), None]

        def learn(rows: list[FieldRow], kinds: bytes) -> None:
            if any(row[5] != ok for row in rows) or any(
                rows[slot][4] != ull for slot in counter_slots
            ):
                learned[0] = None
                return
            state_types = [(slot, rows[slot][4]) for slot in state_slots]
            learned[:] = [
                kinds,
                [(slot, rows[slot][4], scale, flag) for slot, _, scale, flag in scalar_slots],
                [(slot, rows[slot][4]) for slot in energy_slots + power_slots],
                state_types,
                _state_masks(state_types),
            ]

        def emit(b: BatchBuilder, array: np.ndarray) -> None:
            # The common tick: the same kinds of answer as the learned tick (so every field
            # answered), every counter stepped at once (collectors.nvml_field_rows); the
            # columns are the ones built above, and only the values are computed.
            kinds = kind_column.tobytes()
            stepped = block.step(raw_column, ts_column) if kinds == learned[0] else None
            if stepped is None:
                block.store()
                rows = request.rows()
                slow_emit(b, rows)
                block.load()
                learn(rows, kinds)
                return
            raw = raw_column.tolist()
            _, scalar_types, single_types, state_types, state_masks = learned
            values: list[float] = []
            for slot, value_type, scale, flag in scalar_types:
                value = raw[slot] if value_type == ull else decode(value_type, raw[slot])
                values.append((1.0 if value else 0.0) if flag else float(value * scale))
            energy_types = single_types[: len(energy_slots)]
            for slot, value_type in energy_types:
                energy.update(int(decode(value_type, raw[slot])), int(b.ts * 1e6))
                values.append(energy.total)
            totals, rates = stepped
            pairs: list[float] = [0.0] * pair_count
            pairs[0::2] = totals
            pairs[1::2] = rates
            values += pairs
            for slot, value_type in single_types[len(energy_slots) :]:
                values.append(float(decode(value_type, raw[slot]) / 1000.0))
            if state_masks is not None:  # every link's state as 32 or 64 bits: at once
                at, mask = state_masks
                values.append(float(np.count_nonzero((raw_column[at] & mask) == active)))
            elif state_slots:
                values.append(
                    float(sum(1 for slot, vt in state_types if decode(vt, raw[slot]) == active))
                )
            for at in link_at:
                values.append(float(sum([totals[i] for i in at])))
                values.append(float(sum([rates[i] for i in at])))
            b.add_columns(fast_entities, fast_metrics, values)

        return query("field values", "nvmlDeviceGetFieldValues", request.fetch, emit)


def _state_masks(state_types: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray] | None:
    """The link-state slots and the masks that decode them (``raw & mask`` is ``decode`` of a
    32- or 64-bit unsigned answer), or None where a state comes as another type (then each is
    decoded on its own)."""
    widths = {
        pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: _U32,
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: U64 - 1,
    }
    if not state_types or any(vt not in widths for _, vt in state_types):
        return None
    return (
        np.asarray([slot for slot, _ in state_types], dtype=np.intp),
        np.asarray([widths[vt] for _, vt in state_types], dtype=np.uint64),
    )


_PCIE_FIELDS = {
    pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: "tx",
    pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: "rx",
}
_COUNTER_WIDTHS = {
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: U32,
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: 1 << 16,
}
_NVLINK_FIELDS = {
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: "tx",
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: "rx",
}
