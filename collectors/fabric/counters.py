"""Cumulative counters that only grow, whatever the kernel's counter did (wrap, reset, saturate).

sysfs exposes 32-bit InfiniBand data counters that wrap in seconds at 200 Gb/s, 16- and 8-bit
error counters that an operator may clear (``perfquery -x``), and NFS counters that restart on
remount. Consumers compute rates as ``value - lag(value)``, so the collector hands them one
monotonic total per counter; this is the one place a wrap or a reset is decided.
"""

from __future__ import annotations

WRAP_32 = 1 << 32


class Cumulative:
    """One counter's monotonic total; ``advance(raw)`` returns it after the new reading.

    ``wraps_at`` is the counter's modulus (``WRAP_32``) when it is known to wrap; a decrease is
    then a wrap if the wrapped step is plausible (at most ``max_step``, when given), else a
    reset. Without ``wraps_at`` a decrease is a reset: the new reading counts from zero.
    """

    __slots__ = ("raw", "total", "wraps_at", "wraps", "resets")

    def __init__(self, wraps_at: int | None = None) -> None:
        self.raw: int | None = None
        self.total = 0
        self.wraps_at = wraps_at
        self.wraps = 0
        self.resets = 0

    def advance(self, raw: int, max_step: float | None = None) -> int:
        prev = self.raw
        self.raw = raw
        if prev is None:
            self.total = raw
        elif raw >= prev:
            self.total += raw - prev
        else:
            step = None
            if self.wraps_at is not None and prev < self.wraps_at:
                step = raw + self.wraps_at - prev
                if max_step is not None and step > max_step:
                    step = None
            if step is None:
                self.resets += 1
                self.total += raw
            else:
                self.wraps += 1
                self.total += step
        return self.total

    def step(self, raw: int) -> int | None:
        """The increase since the previous reading (None at the first), updating the total."""
        before = None if self.raw is None else self.total
        after = self.advance(raw)
        return None if before is None else after - before
