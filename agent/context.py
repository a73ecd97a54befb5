"""The narrow view of a recording in progress that consumers (live analysis, exporters, the live
reader) get instead of the session: they read the run and the latest tick, publish findings and
health, note events and open read cursors, and can reach nothing else.

Findings and health are published whole (immutable mappings replaced under a lock), so readers on
other threads never see a half-updated state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from agent.model import RunInfo
from agent.snapshot import SnapshotHub

if TYPE_CHECKING:
    import duckdb


class Consumer(Protocol):
    """Something that reads a recording while it runs (exporter, live analysis)."""

    def start(self, context: LiveContext) -> None: ...

    def stop(self) -> None: ...


class LiveContext:
    """One run's live channels; built by the session, handed to each consumer."""

    def __init__(
        self,
        run: RunInfo,
        hub: SnapshotHub,
        *,
        note: Callable[..., None],
        open_cursor: Callable[[], duckdb.DuckDBPyConnection],
        recording_health: Callable[[], Mapping[str, Any]] = dict,
        sampler_cpu_seconds: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.run = run
        self.hub = hub
        self._note = note
        self._open_cursor = open_cursor
        self._recording_health = recording_health
        self._sampler_cpu_seconds = sampler_cpu_seconds
        self._lock = threading.Lock()
        self._findings: tuple[Mapping[str, Any], ...] = ()
        self._health: Mapping[str, Any] = MappingProxyType({})

    @property
    def interval(self) -> float:
        return self.run.interval

    # -- events
    def note(self, kind: str, entity: str, **detail: Any) -> None:
        """Queue an agent event (export failures, notices) into the next tick's batch."""
        self._note(kind, entity, **detail)

    # -- findings
    @property
    def findings(self) -> tuple[Mapping[str, Any], ...]:
        """The live analysis's current findings (dicts: rule, severity, entity, summary...)."""
        return self._findings

    def publish_findings(self, findings: Sequence[Mapping[str, Any]]) -> None:
        self._findings = tuple(MappingProxyType(dict(f)) for f in findings)

    # -- health
    @property
    def health(self) -> Mapping[str, Any]:
        """Consumers' counters (``otlp.failed_exports``...) merged with the recording's own."""
        return MappingProxyType({**self._recording_health(), **self._health})

    def publish_health(self, **values: Any) -> None:
        """Set some of this consumer's health counters (keys are ``<consumer>.<name>``)."""
        with self._lock:
            self._health = MappingProxyType({**self._health, **values})

    # -- reading
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB cursor on the run's database, owned by the calling thread (close it)."""
        return self._open_cursor()

    def sampler_cpu_seconds(self) -> float:
        """CPU seconds the sampler spent so far: the budget live analysis measures against."""
        return self._sampler_cpu_seconds()
