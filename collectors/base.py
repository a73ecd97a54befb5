"""The one interface every collector implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

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
