"""One tick's values as NumPy arrays, for the watches' hot views (:class:`agent.analysis.watch.Tick`).

The watches read the same few columns of the same accelerators and processes every tick; read
one dictionary look-up (and for a counter, two and a division) at a time, that was most of the
live analysis' per-second CPU. The hub keeps its (entity, metric) index while the sources'
columns stay the same (:class:`agent.snapshot.TickValues`), so the positions a view reads are
worked out once per index (:class:`Positions`) and each tick reads them with one fancy index
into the tick's values (and, for counters, the previous tick's at the same positions, when it
had the same index). A tick whose previous one had another index has no rates this way: its
views read value by value, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from agent.snapshot import Key, Snapshot, TickValues


class Positions:
    """Where each view's values sit in the ticks of one index (kept while it is the hub's)."""

    __slots__ = ("index", "_rows", "tables", "devices", "ticks")

    def __init__(self, index: Mapping[Key, int]) -> None:
        self.index = index
        #: The ticks' accelerators (``Tick.devices``), and how many ticks have asked.
        self.devices: dict[str, Any] | None = None
        self.ticks = 0
        #: Per set of accelerators (the job's, every one), its :class:`ColumnTable`.
        self.tables: dict[tuple[str, ...], ColumnTable] = {}
        self._rows: dict[tuple[Hashable, str], tuple[list[str], np.ndarray]] = {}

    def rows(
        self, key: Hashable, metric: str, entities: Callable[[], Sequence[str]]
    ) -> tuple[list[str], np.ndarray]:
        """(the entities that have ``metric``, its positions), for ``entities()`` in first-seen
        order, worked out once: ``key`` is the caller's, and under one index it must name one
        list of entities (``entities`` is called only the first time)."""
        found = self._rows.get((key, metric))
        if found is None:
            index = self.index
            kept = [
                (e, at)
                for e in dict.fromkeys(entities())
                if (at := index.get((e, metric))) is not None
            ]
            found = self._rows[(key, metric)] = (
                [e for e, _ in kept],
                np.fromiter((at for _, at in kept), dtype=np.intp, count=len(kept)),
            )
        return found


class TickArrays:
    """The tick's values (and the previous tick's, when it had the same index) as arrays."""

    __slots__ = ("positions", "values", "now", "before", "dt")

    def __init__(self, positions: Positions, values: TickValues, now: np.ndarray,
                 before: np.ndarray | None, dt: float | None) -> None:  # fmt: skip
        self.positions = positions
        self.values = values
        self.now = now
        self.before = before
        self.dt = dt

    @classmethod
    def of(cls, snap: Snapshot, previous: TickArrays | None) -> TickArrays | None:
        """The arrays of ``snap`` (None: its values are not the hub's indexed ones);
        ``previous``: the arrays of the tick observed before (its values and positions are
        reused when it had the same index)."""
        values = snap.values
        if not isinstance(values, TickValues):
            return None
        index = values.index
        same = previous is not None and previous.positions.index is index
        positions = previous.positions if previous is not None and same else Positions(index)
        now = np.array(values.flat(), dtype=np.float64)
        before = None
        dt = None if snap.previous_ts is None else snap.ts - snap.previous_ts
        prev_values = snap.previous
        if isinstance(prev_values, TickValues) and prev_values.index is index:
            if previous is not None and same and previous.values is prev_values:
                before = previous.now
            else:
                before = np.array(prev_values.flat(), dtype=np.float64)
        return cls(positions, values, now, before, dt)

    def rates(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-second change at ``at`` since the previous tick and where it is known (a
        counter that went back has none: ``Snapshot.rate``'s None); None without a previous
        tick of this index."""
        dt = self.dt
        if self.before is None or dt is None or dt <= 0:
            return None
        now, before = self.now[at], self.before[at]
        return (now - before) / dt, ~(now < before)


class ColumnTable:
    """The ``aw_accel`` columns of one set of accelerators under one index: per column, each
    accelerator's position (as ``Tick.accel`` reads them one by one), so a tick reads every
    column of every accelerator with one fancy index, and counters' rates with one more."""

    __slots__ = ("entities", "row_of", "at", "present", "counter", "any_counter")

    def __init__(
        self,
        index: Mapping[Key, int],
        entities: Sequence[str],
        metric_of: Callable[[str], Mapping[str, str]],
        is_counter: Callable[[str], bool],
    ) -> None:
        self.entities = list(entities)
        columns = list(dict.fromkeys(c for e in self.entities for c in metric_of(e)))
        self.row_of = {c: i for i, c in enumerate(columns)}
        shape = (len(columns), len(self.entities))
        self.at = np.zeros(shape, dtype=np.intp)
        self.present = np.zeros(shape, dtype=bool)
        counter = np.zeros(shape, dtype=bool)
        for j, e in enumerate(self.entities):
            for column, metric in metric_of(e).items():
                at = index.get((e, metric))
                if at is not None:
                    i = self.row_of[column]
                    self.at[i, j], self.present[i, j] = at, True
                    counter[i, j] = is_counter(metric)
        self.counter = counter
        self.any_counter = bool(counter.any())

    def read(self, arrays: TickArrays) -> tuple[list[list[float]], list[list[bool]], bool]:
        """Every column's values (counters as per-second rates), where each is known, and
        whether the counters could be rated (a previous tick of the same index)."""
        raw = arrays.now[self.at]
        values, known, rated = raw, self.present, True
        if self.any_counter:
            before, dt = arrays.before, arrays.dt
            if before is None or dt is None or dt <= 0:
                rated = False
            else:
                then = before[self.at]
                values = np.where(self.counter, (raw - then) / dt, raw)
                known = known & ~(self.counter & (raw < then))  # a counter that went back
        return values.tolist(), known.tolist(), rated

    def counts(self, column: str) -> bool:
        """Whether any accelerator reads ``column`` from a counter."""
        i = self.row_of.get(column)
        return i is not None and bool(self.counter[i].any())
