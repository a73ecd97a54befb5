"""Every kept counter file of every port, read in one loop and unwrapped as whole lists.

A node with 8 ports keeps about 200 counter files; each tick reads them all. The reading is the
syscalls' (open, read, close); what follows works on whole lists with C-level ``map`` calls
(parse, compare with the last reading, add the steps, scale) instead of a Python step per
counter; for 200 values that is cheaper than NumPy's per-call overhead. A counter that went
back (rare: a 32-bit wrap, a cleared error counter) is decided one by one, as
:class:`~collectors.fabric.counters.Cumulative` decides it.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence

from collectors.fabric.counters import WRAP_32

_add, _sub, _lt, _mul = operator.add, operator.sub, operator.lt, operator.mul


def read_all(paths: Sequence[str]) -> list[bytes | None]:
    """Each file's contents (None: it could not be opened or read): one open, read, close."""
    out: list[bytes | None] = []
    append = out.append
    open_, read_, close_, rdonly = os.open, os.read, os.close, os.O_RDONLY
    for path in paths:
        try:
            fd = open_(path, rdonly)
        except OSError:
            append(None)
            continue
        try:
            append(read_(fd, 4096))
        except OSError:
            append(None)
        finally:
            close_(fd)
    return out


class CounterTable:
    """Running totals of counters read together, with their scale and wrap behaviour.

    ``wraps[i]``: the counter wraps at 2**32 (the 32-bit data counters); a decrease is then a
    wrap if the wrapped step is plausible (``max_step``), else a reset. ``carried`` maps a
    path to a previous table's (raw, total, wraps, resets): a rediscovery keeps the totals.
    """

    def __init__(
        self,
        paths: Sequence[str],
        scale: Sequence[int],
        wraps: Sequence[bool],
        carried: dict[str, tuple[int, int, int, int]] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.scale = [float(s) for s in scale]
        self.wraps_32 = list(wraps)
        n = len(self.paths)
        self.raw: list[int | None] = [None] * n
        self.total = [0] * n
        self.wraps = [0] * n
        self.resets = [0] * n
        for i, path in enumerate(self.paths):
            state = (carried or {}).get(path)
            if state is not None:
                self.raw[i], self.total[i], self.wraps[i], self.resets[i] = state
        self._all_seen = None not in self.raw
        #: Every total is its reading (nothing wrapped or reset yet): ``total is raw``.
        self._plain = self.total == self.raw
        if self._plain:
            self.total = self.raw  # type: ignore[assignment]  # no None in raw then
        self._last: tuple[Sequence[bytes | None], list[float | None]] | None = None

    def state(self) -> dict[str, tuple[int, int, int, int]]:
        """Path → (raw, total, wraps, resets) of the counters read at least once."""
        return {
            p: (raw, self.total[i], self.wraps[i], self.resets[i])
            for i, (p, raw) in enumerate(zip(self.paths, self.raw))
            if raw is not None
        }

    def advance(
        self, contents: Sequence[bytes | None], max_step: Callable[[int], float | None]
    ) -> tuple[list[float | None], bool]:
        """Take one tick's ``contents`` (in path order); each counter's scaled total (None:
        absent this tick, it read ``N/A`` or vanished) and whether any file vanished.

        ``max_step(i)`` is the largest plausible step of counter ``i`` (None: any); it is
        asked only when a wrapping counter went back. Contents equal to the last tick's
        (error counters mostly are) give the last tick's list itself: nothing moved."""
        last = self._last
        if last is not None and contents == last[0]:
            return last[1], False
        out = self._advance(contents, max_step)
        self._last = (contents, out[0]) if not out[1] else None
        return out

    def _advance(
        self, contents: Sequence[bytes | None], max_step: Callable[[int], float | None]
    ) -> tuple[list[float | None], bool]:
        try:
            cur = list(map(int, contents))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return self._advance_slowly(contents, max_step)
        raw = self.raw
        if not self._all_seen or any(map(_lt, cur, raw)):  # type: ignore[arg-type]
            return self._advance_slowly(contents, max_step)
        if self._plain:  # the totals are the readings: no steps to add
            self.raw = self.total = cur  # type: ignore[assignment]
        else:
            self.total = list(map(_add, self.total, map(_sub, cur, raw)))
            self.raw = cur  # type: ignore[assignment]
        return list(map(_mul, self.total, self.scale)), False

    def _advance_slowly(
        self, contents: Sequence[bytes | None], max_step: Callable[[int], float | None]
    ) -> tuple[list[float | None], bool]:
        out: list[float | None] = []
        vanished = False
        if self.total is self.raw:  # shared while plain: the steps below may part them
            self.total = list(self.total)  # type: ignore[arg-type]
        for i, data in enumerate(contents):
            if data is None:
                vanished = True
                out.append(None)
                continue
            try:
                now = int(data)
            except ValueError:
                out.append(None)  # N/A now: absent this tick
                continue
            before = self.raw[i]
            self.raw[i] = now
            if before is None:
                self.total[i] = now
            elif now >= before:
                self.total[i] += now - before
            else:
                self._went_back(i, before, now, max_step(i))
            out.append(self.total[i] * self.scale[i])
        self._all_seen = None not in self.raw
        self._plain = self.total == self.raw
        if self._plain:
            self.total = self.raw  # type: ignore[assignment]
        return out, vanished

    def _went_back(self, i: int, before: int, now: int, bound: float | None) -> None:
        step = None
        if self.wraps_32[i] and before < WRAP_32:
            step = now + WRAP_32 - before
            if bound is not None and step > bound:
                step = None
        if step is None:
            self.resets[i] += 1
            step = now
        else:
            self.wraps[i] += 1
        self.total[i] += step
