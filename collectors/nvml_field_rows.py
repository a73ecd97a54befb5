"""A device's field-value rows in one vectorised step, for the tick where every field answered.

The field request of an H100 returns ~60 rows a tick: 38 byte counters (PCIe, every NVLink's
TX and RX), 18 link states and the scalars. Stepping each counter in Python cost ~100 µs a
device and tick, most of the NVML collector's own work. In the common tick (every field
answered, every counter 64-bit with a fresh driver sample and a plausible step) the rows are
the same every tick, so the entity and metric columns are built once and only the values are
computed: the counters as NumPy arrays over the request's own buffer, the rest from its
values as Python ints. Any other tick (the first, a failed field, a reset, a narrower value
type, a driver sample read twice) goes through :class:`collectors.nvml_counters.CounterTrack`
as before: the arrays are written back to the tracks first and read again after, so both
paths step the same state and give the same values (``tests/collectors/test_nvml_field_rows.py``
replays random ticks through both against the previous implementation).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np
import pynvml

from collectors.nvml_counters import U64, CounterTrack


def _row_dtype() -> np.dtype:
    """A NumPy view of ``c_nvmlFieldValue_t`` (its offsets, its size) over the request buffer."""
    names = ("fieldId", "scopeId", "timestamp", "latencyUsec", "valueType", "nvmlReturn", "value")
    formats = ("<u4", "<u4", "<i8", "<i8", "<u4", "<u4", "<u8")
    row = pynvml.c_nvmlFieldValue_t
    return np.dtype(
        {
            "names": list(names),
            "formats": list(formats),
            "offsets": [getattr(row, n).offset for n in names],
            "itemsize": ctypes.sizeof(row),
        }
    )


ROW_DTYPE = _row_dtype()
#: Each row's (value type, nvmlReturn) as one 64-bit word: a tick's kinds compare as bytes.
KIND_DTYPE = np.dtype(
    {
        "names": ["kind"],
        "formats": ["<u8"],
        "offsets": [pynvml.c_nvmlFieldValue_t.valueType.offset],
        "itemsize": ctypes.sizeof(pynvml.c_nvmlFieldValue_t),
    }
)
assert pynvml.c_nvmlFieldValue_t.nvmlReturn.offset == pynvml.c_nvmlFieldValue_t.valueType.offset + 4
ULL = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG


class CounterBlock:
    """The device's byte counters stepped together: previous raw values and driver
    timestamps as arrays, exact totals (raw units) as Python ints, modulus masks. ``ready``
    while it holds the state; the tracks hold it otherwise (before the first tick, after a
    tick they stepped)."""

    __slots__ = ("slots", "tracks", "scale", "scales", "max_rate", "raw", "ts", "totals", "mask")

    def __init__(self, slots: Sequence[int], tracks: Sequence[CounterTrack]) -> None:
        self.slots = np.asarray(slots, dtype=np.intp)
        self.tracks = list(tracks)
        self.scales = [t.scale for t in self.tracks]  # as given (an int for KiB): exact totals
        self.scale = np.asarray(self.scales, dtype=np.float64)
        self.max_rate = np.asarray([t.max_rate for t in self.tracks], dtype=np.float64)
        self.raw: np.ndarray | None = None
        self.ts = self.mask = np.zeros(0, dtype=np.uint64)
        self.totals: list[int] = []

    @property
    def ready(self) -> bool:
        return self.raw is not None

    def load(self) -> None:
        """Take the tracks' state (after they stepped); not ready while one has no reading yet
        or a value 64-bit arrays cannot hold (a modulus that is not a power of two)."""
        tracks = self.tracks
        if not all(
            t.raw is not None
            and 0 <= t.raw < U64
            and 0 < t.modulus <= U64
            and t.modulus & (t.modulus - 1) == 0
            for t in tracks
        ):
            self.raw = None
            return
        self.raw = np.asarray([t.raw for t in tracks], dtype=np.uint64)
        self.ts = np.asarray([t.ts_us for t in tracks], dtype=np.int64)
        self.totals = [t.raw_total for t in tracks]
        self.mask = np.asarray([t.modulus - 1 for t in tracks], dtype=np.uint64)

    def store(self) -> None:
        """Give the state back to the tracks (before a tick they step), then not ready."""
        if self.raw is None:
            return
        for track, raw, ts, total in zip(
            self.tracks, self.raw.tolist(), self.ts.tolist(), self.totals
        ):
            track.raw, track.ts_us, track.raw_total = raw, ts, total
        self.raw = None

    def step(self, values: np.ndarray, stamps: np.ndarray) -> tuple[list, list[float]] | None:
        """(totals, rates) in catalog units when every counter is in ``CounterTrack.update``'s
        common case (a newer driver sample, a plausible step; the caller checked they are all
        64-bit answers); None, with nothing changed, otherwise. The same arithmetic."""
        raw_before = self.raw
        if raw_before is None:
            return None
        slots = self.slots
        ts, ts_before = stamps[slots], self.ts
        raw = values[slots]
        step = (raw - raw_before) & self.mask  # the unsigned step modulo a power of two
        elapsed = (ts - ts_before) / 1e6
        delta = step * self.scale
        fresh = (ts > ts_before) & (delta <= self.max_rate * np.fmax(elapsed, 1.0))
        if np.count_nonzero(fresh) != len(fresh):
            return None
        self.raw, self.ts = raw, ts
        self.totals = totals = [t + s for t, s in zip(self.totals, step.tolist())]
        # The tracks' own expression (an int total for KiB counters): the very same values.
        return [t * s for t, s in zip(totals, self.scales)], (delta / elapsed).tolist()
