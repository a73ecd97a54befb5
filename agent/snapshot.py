"""The latest tick, shared read-only with the TUI and exporters without touching devices again."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.model import Batch, Event

Key = tuple[str, str]  # (entity, metric)


class TickValues(Mapping[Key, float]):
    """One tick's values by (entity, metric), read through a position index.

    A plain dict of every value cost the sampler ~0.15-0.3 ms a tick (a key tuple and a hash
    per value, ~1,200 values on 8 GPUs), most of which no consumer reads. Sources send the same
    entities and metrics tick after tick, so the hub keeps the index (key → position in the
    tick's values, the last batch's value winning, as ``dict.update`` in batch order gives)
    while every batch's columns are equal to the previous tick's, and builds only the flat list
    of values, on the first look-up."""

    __slots__ = ("_index", "_batches", "_flat")

    def __init__(self, index: Mapping[Key, int], batches: Sequence[Batch]) -> None:
        self._index = index
        self._batches = batches
        self._flat: list[float] | None = None

    def _values(self) -> list[float]:
        flat = self._flat
        if flat is None:
            flat = self._flat = list(itertools.chain.from_iterable(b.values for b in self._batches))
        return flat

    def __getitem__(self, key: Key) -> float:
        return self._values()[self._index[key]]

    @property
    def index(self) -> Mapping[Key, int]:
        """(entity, metric) → position in :meth:`flat`; the same object tick after tick while
        the sources' columns stay the same (consumers key their own plans on its identity)."""
        return self._index

    def flat(self) -> list[float]:
        """Every value of the tick in index order (built once, on first use)."""
        return self._values()

    def get(self, key: Key, default: Any = None) -> Any:
        # The consumers' hot path (live analysis: ~350 look-ups a tick): one call, no more.
        at = self._index.get(key)
        if at is None:
            return default
        flat = self._flat
        return (self._values() if flat is None else flat)[at]

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[Key]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def _index_of(batches: Sequence[Batch]) -> dict[Key, int]:
    keys = itertools.chain.from_iterable(zip(b.entities, b.metrics) for b in batches)
    return dict(zip(keys, itertools.count()))


@dataclass(frozen=True)
class Snapshot:
    """Every value of one tick, the previous tick's values (for rates), and entity attributes."""

    ts: float
    seq: int
    batches: tuple[Batch, ...]
    values: Mapping[Key, float]
    previous: Mapping[Key, float] = field(default_factory=dict)
    previous_ts: float | None = None
    entity_attrs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    stats: Mapping[str, Any] = field(default_factory=dict)

    def value(self, entity: str, metric: str, default: float | None = None) -> float | None:
        return self.values.get((entity, metric), default)

    def rate(self, entity: str, metric: str) -> float | None:
        """Per-second change of a counter since the previous tick (None if unknown or reset)."""
        now = self.values.get((entity, metric))
        before = self.previous.get((entity, metric))
        if now is None or before is None or self.previous_ts is None or now < before:
            return None
        dt = self.ts - self.previous_ts
        return (now - before) / dt if dt > 0 else None

    def rows(self) -> Iterator[tuple[str, str, str, float]]:
        """(source, entity, metric, value) for every value of the tick."""
        for batch in self.batches:
            yield from zip([batch.source] * len(batch), batch.entities, batch.metrics, batch.values)

    #: Per source, its entities, shared by the snapshots of one shape (the hub's index).
    shape_cache: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)

    def entities(self, source: str) -> tuple[str, ...]:
        """The source's entities in first-seen order; worked out once while the sources'
        columns stay the same (the headless line and the UI ask each tick)."""
        found = self.shape_cache.get(source)
        if found is None:
            seen: dict[str, None] = {}
            for batch in self.batches:
                if batch.source == source:
                    seen.update(dict.fromkeys(batch.entities))
            found = self.shape_cache[source] = tuple(seen)
        return found


#: Entities' attributes the hub keeps however many have gone (see ``_forget_gone``).
ATTRS_KEPT_MIN = 256


class SnapshotHub:
    """Holds the latest snapshot; subscribers are called from the sampler thread and must not block."""

    def __init__(self) -> None:
        self._latest: Snapshot | None = None
        self._attrs: dict[str, Mapping[str, Any]] = {}
        self._attrs_shown: Mapping[str, Any] = {}  # the copy snapshots share until attrs change
        #: Each source's latest batch: whose entities are live (``_forget_gone``).
        self._seen: dict[str, Batch] = {}
        self._subscribers: list[Callable[[Snapshot], None]] = []
        self._lock = threading.Lock()
        self._seq = 0
        #: The previous tick's (source, entities, metrics) per batch and their index.
        self._shape: list[tuple[str, Sequence[str], Sequence[str]]] = []
        self._index: dict[Key, int] = {}
        self._shape_cache: dict[str, tuple[str, ...]] = {}

    @property
    def latest(self) -> Snapshot | None:
        return self._latest

    def subscribe(self, callback: Callable[[Snapshot], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[Snapshot], None]) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def _index_for(self, batches: Sequence[Batch]) -> dict[Key, int]:
        """The tick's index: the previous one while every batch's columns are the same."""
        shape = self._shape
        same = len(shape) == len(batches) and all(
            source == b.source
            and (entities is b.entities or entities == b.entities)
            and (metrics is b.metrics or metrics == b.metrics)
            for (source, entities, metrics), b in zip(shape, batches)
        )
        if not same:
            self._index = _index_of(batches)
            self._shape = [(b.source, b.entities, b.metrics) for b in batches]
            self._shape_cache = {}
        return self._index

    def _forget_gone(self) -> None:
        """Drop the attributes of entities the latest batch of every source lacks (processes
        that ended; a source missing this tick counts with its last batch), once there are
        twice as many as live ones: a job that keeps spawning processes must not grow the hub
        for a week."""
        live = {e for b in self._seen.values() for e in (*b.entities, *b.entity_attrs)}
        if len(self._attrs) > 2 * len(live) + ATTRS_KEPT_MIN:
            self._attrs = {e: a for e, a in self._attrs.items() if e in live}

    def publish(self, ts: float, batches: list[Batch], stats: Mapping[str, Any]) -> Snapshot:
        frozen = tuple(batches)
        values = TickValues(self._index_for(frozen), frozen)
        events: list[Event] = []
        changed = False
        seen = self._seen
        for batch in batches:
            seen[batch.source] = batch
            if batch.events:
                events.extend(batch.events)
            if batch.entity_attrs:
                self._attrs.update(batch.entity_attrs)
                changed = True
        before = self._latest
        if changed:  # most ticks carry no attributes: no copy of every entity's each tick
            if len(self._attrs) > ATTRS_KEPT_MIN:
                self._forget_gone()
            self._attrs_shown = dict(self._attrs)
        self._seq += 1
        snap = Snapshot(
            ts=ts,
            seq=self._seq,
            batches=frozen,
            values=values,
            previous=before.values if before else {},
            previous_ts=before.ts if before else None,
            entity_attrs=self._attrs_shown,
            events=tuple(events),
            stats=dict(stats),
            shape_cache=self._shape_cache,
        )
        self._latest = snap
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            with contextlib.suppress(Exception):  # a consumer's bug must never stop sampling
                callback(snap)
        return snap
