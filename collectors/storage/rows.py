"""One tick's values of the storage source, gathered segment by segment into one batch.

A segment is one entity's fixed run of metrics (a mount's totals, an NFS operation's counts),
made once and kept; each tick a tracker hands over a segment and its values as a list. The
batch's entity and metric columns are rebuilt only when the sequence of segments changes (an
operation starts moving, a mount appears), otherwise the previous tick's lists are handed on:
the per-value Python of a ``BatchBuilder.add`` call is gone from the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

#: (entities, metrics) of one segment; compared by identity in the layout key.
Segment = tuple[tuple[str, ...], tuple[str, ...]]

_SEGMENTS: dict[tuple[str, tuple[str, ...]], Segment] = {}


def segment(entity: str, metrics: Sequence[str]) -> Segment:
    """The one segment of ``entity`` with these ``metrics`` (made once, then shared)."""
    key = (entity, tuple(metrics))
    found = _SEGMENTS.get(key)
    if found is None:
        if len(_SEGMENTS) > 65536:  # bounded: entities of finished runs go
            _SEGMENTS.clear()
        found = _SEGMENTS[key] = ((entity,) * len(key[1]), key[1])
    return found


class Rows:
    """The segments and values of one tick, in order."""

    __slots__ = ("segments", "values")

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.values: list[float] = []

    def add(self, seg: Segment, values: Sequence[float]) -> None:
        self.segments.append(seg)
        self.values += values


class Layout:
    """The entity and metric columns of the last sequence of segments seen."""

    def __init__(self) -> None:
        self._key: tuple[Segment, ...] | None = None
        self.entities: list[str] = []
        self.metrics: list[str] = []

    def columns(self, rows: Rows) -> tuple[list[str], list[str]]:
        key = tuple(rows.segments)
        if key != self._key:
            self._key = key
            self.entities = [e for seg in key for e in seg[0]]
            self.metrics = [m for seg in key for m in seg[1]]
        return self.entities, self.metrics
