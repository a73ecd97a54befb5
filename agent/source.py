"""What a source is: its collector interface, its entity kinds and its one declaration.

It lives in the core (the sampler runs collectors; the registry reads declarations); the sources
themselves live under ``collectors/`` and register through the ``accelwatch.sources`` entry
point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.catalog import Metric
from agent.model import Batch


@dataclass
class CollectContext:
    """What a collector may know about the run: the watched process tree, nothing else."""

    root_pid: int | None = None
    #: Current PIDs of the watched tree (root and descendants); empty for host-only runs.
    job_pids: Callable[[], frozenset[int]] = field(default=lambda: frozenset())


class Collector(ABC):
    """A small class per source: ``start`` once, ``collect`` each tick, ``close`` at the end.

    ``start`` raises :class:`agent.errors.CollectorUnavailable` when the source is absent.
    ``collect`` may raise; the sampler then disables the collector with a warning event and
    keeps the others going. Per-entity problems (a process that vanished, an NVML query that
    is not supported) are data, not exceptions.
    """

    source: str = ""

    def start(self, ctx: CollectContext) -> None:  # noqa: B027 - optional hook
        """Open handles; raise CollectorUnavailable if the source is absent."""

    @abstractmethod
    def collect(self, now: float) -> Batch:
        """Sample once at wall-clock time ``now`` (seconds since the epoch)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release handles."""


@dataclass(frozen=True)
class EntityKind:
    """Which of a source's entities are of one kind (see ``agent/catalog/roles.py``).

    ``pattern`` is a regular expression that matches the whole entity name (``gpu[0-9]+``); the
    analysis turns it into SQL, so recordings made before a source declared it are read alike.
    ``otel_attributes`` maps OpenTelemetry attribute names to templates over the entity's
    name and its described attributes (``{"hw.id": "{uuid}", "hw.name": "{name}"}``).
    """

    kind: str
    pattern: str
    otel_attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceSpec:
    """Everything about one source in one place: found through the registry, never by name.

    ``collector`` builds the collector (import heavy driver modules inside it, not at module
    import); ``simulator(scenario, owner_pids)`` installs the source's simulated devices for a
    scenario that has them and returns an object with ``uninstall()``, or None.
    """

    name: str
    label: str
    metrics: Sequence[Metric]
    entity_kinds: Sequence[EntityKind]
    collector: Callable[[], Collector] | None = None
    simulator: Callable[..., Any] | None = None
