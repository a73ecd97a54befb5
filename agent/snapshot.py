"""The latest tick, shared read-only with the TUI and exporters without touching devices again."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.model import Batch, Event

Key = tuple[str, str]  # (entity, metric)


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

    def entities(self, source: str) -> list[str]:
        seen: dict[str, None] = {}
        for batch in self.batches:
            if batch.source == source:
                seen.update(dict.fromkeys(batch.entities))
        return list(seen)


class SnapshotHub:
    """Holds the latest snapshot; subscribers are called from the sampler thread and must not block."""

    def __init__(self) -> None:
        self._latest: Snapshot | None = None
        self._attrs: dict[str, Mapping[str, Any]] = {}
        self._attrs_shown: Mapping[str, Any] = {}  # the copy snapshots share until attrs change
        self._subscribers: list[Callable[[Snapshot], None]] = []
        self._lock = threading.Lock()
        self._seq = 0

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

    def publish(self, ts: float, batches: list[Batch], stats: Mapping[str, Any]) -> Snapshot:
        values: dict[Key, float] = {}
        events: list[Event] = []
        changed = False
        for batch in batches:
            values.update(zip(zip(batch.entities, batch.metrics), batch.values))
            events.extend(batch.events)
            if batch.entity_attrs:
                self._attrs.update(batch.entity_attrs)
                changed = True
        before = self._latest
        if changed:  # most ticks carry no attributes: no copy of every entity's each tick
            self._attrs_shown = dict(self._attrs)
        self._seq += 1
        snap = Snapshot(
            ts=ts,
            seq=self._seq,
            batches=tuple(batches),
            values=values,
            previous=before.values if before else {},
            previous_ts=before.ts if before else None,
            entity_attrs=self._attrs_shown,
            events=tuple(events),
            stats=dict(stats),
        )
        self._latest = snap
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            with contextlib.suppress(Exception):  # a consumer's bug must never stop sampling
                callback(snap)
        return snap
