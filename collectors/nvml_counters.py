"""Cumulative hardware counters turned into monotonic totals and rates.

NVML's byte and energy counters are cumulative but not clean: they wrap at their width,
reset when the driver reloads, and (on some boards) jump. A :class:`CounterTrack` keeps the
previous raw reading and its timestamp and hands out a total that only grows plus a rate
over the interval, so a wrap adds the few bytes it should and a reset or jump adds nothing
instead of a negative or astronomically large spike.
"""

from __future__ import annotations

from dataclasses import dataclass

U64 = 1 << 64
U32 = 1 << 32


@dataclass(slots=True)
class CounterTrack:
    """One cumulative counter of one entity.

    ``scale`` converts raw units to the catalog unit (KiB → bytes: 1024, mJ → J: 0.001).
    ``max_rate`` is the highest physically plausible rate in catalog units per second; a
    step that would exceed it (after allowing for a wrap) is a reset, not traffic.
    """

    scale: float = 1.0
    max_rate: float = 4e12
    modulus: int = U64
    raw: int | None = None
    ts_us: int = 0
    raw_total: int = 0  # exact, in raw units; only converted on the way out
    rate: float | None = None  # of the last update
    resets: int = 0

    @property
    def total(self) -> float:
        """The monotonic total in catalog units."""
        return self.raw_total * self.scale

    def update(self, raw: int, ts_us: int) -> float | None:
        """Account a new raw reading taken at ``ts_us`` (µs); return the rate, if known.

        The first reading seeds the total with the raw value (so totals match what the
        driver reports until the first wrap or reset); it has no rate.
        """
        self.rate = rate = self._step(raw, ts_us)
        return rate

    def _step(self, raw: int, ts_us: int) -> float | None:
        previous, previous_ts = self.raw, self.ts_us
        self.raw, self.ts_us = raw, ts_us
        if previous is None:
            self.raw_total = raw
            return None
        step = (raw - previous) % self.modulus  # unsigned step: also right across a wrap
        elapsed = (ts_us - previous_ts) / 1e6
        if elapsed <= 0:
            # Same driver sample read twice (the counter refreshes slower than we poll).
            if step == 0:
                return None
            elapsed = 0.0
        delta = step * self.scale
        if delta > self.max_rate * max(elapsed, 1.0):
            self.resets += 1  # reset or jump: the traffic in this interval is unknown
            return None
        self.raw_total += step
        return delta / elapsed if elapsed > 0 else None
