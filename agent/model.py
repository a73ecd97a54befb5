"""The data model that flows collectors → store → analysis → TUI / exporters.

A collector returns one :class:`Batch` per tick: columnar samples of one source, plus the
events it saw and the attributes of entities it discovered. Batches are immutable once built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Column names and NumPy dtypes of a batch's samples, as the store ingests them.
SAMPLE_COLUMNS = {
    "ts": "datetime64[us]",  # UTC
    "source": object,
    "entity": object,
    "metric": object,
    "value": np.float64,
}


@dataclass(frozen=True)
class Event:
    """Something that happened once: a process started, a collector failed, an XID arrived."""

    ts: float
    kind: str
    entity: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def detail_json(self) -> str:
        return json.dumps(dict(self.detail), sort_keys=True, default=str)


@dataclass(frozen=True)
class Batch:
    """Samples of one source at one tick, as parallel columns."""

    source: str
    ts: float
    entities: Sequence[str]
    metrics: Sequence[str]
    values: Sequence[float]
    events: Sequence[Event] = ()
    #: entity → attributes (name, uuid, cmdline, ppid, used_by_job ...); sent when they change.
    entity_attrs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Rows for tables other than ``samples``, as NumPy columns by record kind (the training
    #: client's metrics and config: :mod:`agent.tracking.tables`); written with the tick.
    records: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    def to_columns(self) -> dict[str, np.ndarray]:
        """The samples as NumPy columns (:data:`SAMPLE_COLUMNS`), which DuckDB scans directly.

        NumPy rather than Arrow keeps pyarrow (~35 MB of code) out of the agent process.
        """
        n = len(self.values)
        return {
            "ts": np.full(n, int(self.ts * 1_000_000), dtype="datetime64[us]"),
            "source": np.full(n, self.source, dtype=object),
            "entity": np.array(self.entities, dtype=object),
            "metric": np.array(self.metrics, dtype=object),
            "value": np.array(self.values, dtype=np.float64),
        }


class BatchBuilder:
    """Collects one tick of samples column by column; ``build()`` freezes them."""

    __slots__ = ("source", "ts", "_entities", "_metrics", "_values", "_events", "_attrs")

    def __init__(self, source: str, ts: float) -> None:
        self.source = source
        self.ts = ts
        self._entities: list[str] = []
        self._metrics: list[str] = []
        self._values: list[float] = []
        self._events: list[Event] = []
        self._attrs: dict[str, Mapping[str, Any]] = {}

    def add(self, entity: str, metric: str, value: float | int | None) -> None:
        """Add one value; ``None`` (not available) is skipped."""
        if value is None:
            return
        self._entities.append(entity)
        self._metrics.append(metric)
        self._values.append(float(value))

    def add_row(self, entity: str, metrics: Sequence[str], values: Sequence[float]) -> None:
        """Add one entity's values at once (already floats, none missing): the hot path of a
        collector with many entities, a few list extends instead of a call per value."""
        self._entities.extend([entity] * len(metrics))
        self._metrics.extend(metrics)
        self._values.extend(values)

    def add_columns(
        self, entities: Sequence[str], metrics: Sequence[str], values: Sequence[float]
    ) -> None:
        """Add parallel columns at once (values present and already floats): a collector's
        hot loop gathers a device's values and hands them over in three extends."""
        self._entities.extend(entities)
        self._metrics.extend(metrics)
        self._values.extend(values)

    def add_many(self, entity: str, values: Mapping[str, float | int | None]) -> None:
        for metric_name, value in values.items():
            self.add(entity, metric_name, value)

    def event(self, kind: str, entity: str, ts: float | None = None, **detail: Any) -> None:
        self._events.append(Event(self.ts if ts is None else ts, kind, entity, detail))

    def describe(self, entity: str, **attrs: Any) -> None:
        """Record attributes of an entity (kept in the store's ``entities`` table)."""
        self._attrs[entity] = attrs

    def build(self) -> Batch:
        return Batch(
            self.source,
            self.ts,
            self._entities,
            self._metrics,
            self._values,
            tuple(self._events),
            self._attrs,
        )


@dataclass
class RunInfo:
    """Metadata of one recording, stored in ``runs``."""

    run_id: str
    name: str
    pid: int | None
    cmdline: list[str]
    cwd: str
    host: str
    started: float
    interval: float
    db_path: str
    tags: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    mode: str = "attach"
    simulated: bool = False
    scenario: str | None = None
    ended: float | None = None
    exit_code: int | None = None
    status: str = "running"
