"""The latest snapshot as observations per instrument, built once per tick and shared by readers.

Observable-instrument callbacks run on the exporters' threads (the OTLP reader's ticker, the
Prometheus scrape handler). They only read ``SnapshotHub.latest``, so exporting never queries
a device and never waits for the sampler. Per-process series are bounded: only the job's
processes (the process collector watches nothing else) and at most ``max_processes`` of them,
kept in first-seen order so series do not churn.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry.metrics import Observation

from agent.registry import default_registry
from agent.snapshot import Snapshot
from exporters.naming import (
    DCGM_KINDS,
    Attributes,
    ExportPlan,
    Route,
    dcgm_labels,
    entity_attributes,
    entity_kind,
)

DEFAULT_MAX_PROCESSES = 64


class _EntitySeries:
    """Cached attribute sets of one entity, valid while its described attributes are unchanged."""

    __slots__ = ("own", "parent", "base", "dcgm", "pid", "merged")

    def __init__(
        self,
        own: Any,
        parent: Any,
        base: Attributes | None,
        dcgm: Attributes | None,
        pid: int | None,
    ) -> None:
        self.own = own
        self.parent = parent
        self.base = base
        self.dcgm = dcgm
        self.pid = pid  # the process a per-process series belongs to
        self.merged: dict[int, Attributes | None] = {}


class SeriesIndex:
    """Turns snapshots into ``{instrument: [Observation]}``, caching attributes per entity."""

    def __init__(
        self,
        plan: ExportPlan,
        hostname: str,
        max_processes: int = DEFAULT_MAX_PROCESSES,
        health: dict[str, Any] | None = None,
    ) -> None:
        self.plan = plan
        self._health = health
        self.hostname = hostname
        self.max_processes = max_processes
        #: Processes of the job left without series because of the cap (latest tick).
        self.capped_processes = 0
        self._routes: dict[str, list[tuple[int, Route]]] = {
            metric: [(id(route), route) for route in routes]
            for metric, routes in plan.routes.items()
        }
        self._lock = threading.Lock()
        self._seq = -1
        self._points: dict[str, list[Observation]] = {}
        self._admitted: dict[int, None] = {}
        self._entities: dict[tuple[str, str], _EntitySeries] = {}

    def points(self, snapshot: Snapshot | None) -> Mapping[str, list[Observation]]:
        """Every instrument's observations for ``snapshot``, built once per snapshot."""
        if snapshot is None:
            return {}
        with self._lock:
            if snapshot.seq != self._seq:
                self._points = self.build(snapshot)
                self._seq = snapshot.seq
            return self._points

    def observations(self, snapshot: Snapshot | None, instrument: str) -> list[Observation]:
        """One instrument's observations for ``snapshot``."""
        return self.points(snapshot).get(instrument, [])

    def build(self, snapshot: Snapshot) -> dict[str, list[Observation]]:
        admitted = self._admit(snapshot)
        points: dict[str, list[Observation]] = {name: [] for name in self.plan.instruments}
        described = snapshot.entity_attrs
        seen: set[tuple[str, str]] = set()
        for batch in snapshot.batches:
            source = batch.source
            last_entity: str | None = None
            series: _EntitySeries | None = None
            skip = False
            # collectors emit an entity's metrics together: resolve each entity once per run
            for entity, metric, value in zip(batch.entities, batch.metrics, batch.values):
                routes = self._routes.get(metric)
                if routes is None:
                    continue
                if entity != last_entity:
                    last_entity = entity
                    series = self._series(source, entity, described)
                    seen.add((source, entity))
                    skip = series.pid is not None and series.pid not in admitted
                if skip:
                    continue
                assert series is not None
                for key, route in routes:
                    merged = series.merged
                    attributes = merged[key] if key in merged else self._merge(series, key, route)
                    if attributes is None:
                        continue
                    if route.as_rate or route.scale != 1.0:
                        exported = _value(snapshot, entity, metric, value, route)
                        if exported is None:
                            continue
                        value_out = exported
                    else:
                        value_out = value
                    points[route.instrument].append(Observation(value_out, attributes))
        for stale in self._entities.keys() - seen:
            del self._entities[stale]
        return {name: observed for name, observed in points.items() if observed}

    def _admit(self, snapshot: Snapshot) -> Mapping[int, None]:
        """The job's processes that get series: those already admitted first, then new ones."""
        current = [
            int(e)
            for b in snapshot.batches
            for e in dict.fromkeys(b.entities)
            if e.isdigit() and self._kind(b.source, e) == "process"
        ]
        alive = set(current)
        admitted = {pid: None for pid in self._admitted if pid in alive}
        for pid in current:
            if len(admitted) >= self.max_processes:
                break
            admitted.setdefault(pid, None)
        self._admitted = admitted
        self.capped_processes = len(alive) - len(admitted)
        if self._health is not None and (
            self.capped_processes or "export.capped_processes" in self._health
        ):
            self._health["export.capped_processes"] = self.capped_processes
        return admitted

    @staticmethod
    def _kind(source: str, entity: str) -> str | None:
        return default_registry().kind_of(source, entity)  # memoized per (source, entity)

    def _series(self, source: str, entity: str, described: Mapping[str, Any]) -> _EntitySeries:
        own = described.get(entity)
        parent = described.get(entity.split("/", 1)[0])
        key = (source, entity)
        cached = self._entities.get(key)
        if cached is not None and cached.own is own and cached.parent is parent:
            return cached
        kind = entity_kind(source, entity)
        base = entity_attributes(source, entity, described)
        is_device = kind is not None and kind.kind in DCGM_KINDS
        dcgm = dcgm_labels(entity, described, self.hostname) if is_device else None
        pid = None
        if kind is not None and kind.kind in ("process", "accelerator.process") and base:
            found = base.get("process.pid")
            pid = found if isinstance(found, int) else None
        cached = _EntitySeries(own, parent, base, dcgm, pid)
        self._entities[key] = cached
        return cached

    @staticmethod
    def _merge(series: _EntitySeries, key: int, route: Route) -> Attributes | None:
        base = series.dcgm if route.dcgm else series.base
        merged = None if base is None else {**base, **route.fixed_attributes}
        series.merged[key] = merged
        return merged


def _value(
    snapshot: Snapshot, entity: str, metric: str, value: float, route: Route
) -> float | None:
    if route.as_rate:
        rate = snapshot.rate(entity, metric)
        return None if rate is None else rate * route.scale
    return value * route.scale
