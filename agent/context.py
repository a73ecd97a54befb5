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


class RecordingControl(Protocol):
    """What a live viewer may do to the recording it shows: wait for its end, ask it to stop."""

    def wait_end(self) -> str:
        """Block until the recording ends; the reason (``target exited``, ``signal SIGTERM``)."""
        ...

    def stop(self, reason: str) -> None: ...

    def stopping(self) -> bool: ...

    def target_exit_code(self) -> int | None: ...


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
        sampler_cpu_seconds: Callable[[], float] | None = None,
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
        self._boards: dict[str, dict[str, Any]] = {}
        #: Sources that never started or were disabled at start: source → reason.
        self.startup_notices: Mapping[str, str] = MappingProxyType({})

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
        merged: dict[str, Any] = dict(self._recording_health())
        for board in list(self._boards.values()):
            merged.update(dict(board))
        merged.update(self._health)
        return MappingProxyType(merged)

    def counters(self, owner: str) -> dict[str, Any]:
        """A dict of counters that ``owner`` alone writes (one writer each); merged into health."""
        with self._lock:
            return self._boards.setdefault(owner, {})

    def publish_health(self, **values: Any) -> None:
        """Set some of this consumer's health counters (keys are ``<consumer>.<name>``)."""
        with self._lock:
            self._health = MappingProxyType({**self._health, **values})

    # -- reading
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB cursor on the run's database, owned by the calling thread (close it)."""
        return self._open_cursor()

    def sampler_cpu_seconds(self) -> float | None:
        """CPU seconds the sampler spent so far (the budget live analysis measures against);
        None when no sampler runs (analysis of a recording fed by other means)."""
        return None if self._sampler_cpu_seconds is None else self._sampler_cpu_seconds()
