"""What a source is: its collector interface, its entity kinds and its one declaration.

It lives in the core (the sampler runs collectors; the registry reads declarations); the sources
themselves live under ``collectors/`` and register through the ``accelwatch.sources`` entry
point group.
"""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the catalog's own modules import this one
    from agent.catalog import Metric
    from agent.model import Batch


@dataclass
class CollectContext:
    """What a collector may know about the run: the watched process tree, nothing else."""

    root_pid: int | None = None
    #: Current PIDs of the watched tree (root and descendants); empty for host-only runs.
    job_pids: Callable[[], frozenset[int]] = field(default=lambda: frozenset())
    #: Where sysfs and procfs are read (``--sys-root`` / ``--proc-root``): a captured tree
    #: replays a support case; tests point them at directories they build.
    sys_root: str = "/sys"
    proc_root: str = "/proc"
    #: Source options from the command line, by source name (``{"tpu": {"runtime": "h:8431"}}``);
    #: a source reads only its own entry.
    options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


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

    def settle(self) -> None:  # noqa: B027 - optional hook
        """Before the run's last sample: take in what the target sent before it ended (a
        source fed by the job itself must not lose its last messages)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release handles."""

    def health(self) -> Mapping[str, Any]:
        """Counters for the recording's health channel (``<owner>.<name>`` keys, merged into
        :attr:`agent.context.LiveContext.health`); none by default."""
        return {}


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

    def attributes(self, entity: str, described: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``otel_attributes`` filled in for ``entity``; a template whose field is unknown is left out.

        Fields are ``entity``, the pattern's named groups (digits become ints) and the entity's
        described attributes. A template that is exactly one field keeps the value's type.
        """
        found = _compiled(self.pattern).fullmatch(entity)
        fields: dict[str, Any] = {"entity": entity, **(described or {})}
        if found is not None:
            for key, value in found.groupdict().items():
                if value is not None:
                    fields[key] = int(value) if value.isdigit() else value
        out: dict[str, Any] = {}
        for name, template in self.otel_attributes.items():
            whole = _WHOLE_FIELD.fullmatch(template)
            try:
                out[name] = fields[whole.group(1)] if whole else template.format_map(fields)
            except (KeyError, IndexError, ValueError):
                continue
        return out


_WHOLE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclass(frozen=True)
class SourceSpec:
    """Everything about one source in one place: found through the registry, never by name.

    ``metrics`` are the catalog entries the source adds (each with ``source == name``);
    ``collector`` builds the collector (import heavy driver modules inside it, not at module
    import; None for a source the job itself reports, such as ``steps``);
    ``simulator(scenario, owner_pids)`` installs the source's simulated devices for a scenario
    (its name or .toml path) whose ``sources`` name this source, reading its own part, and
    returns an object with ``uninstall()`` (or None: nothing to simulate); ``owner_pids()`` are
    the processes that hold the devices. ``check_scenario(scenario)`` raises ValueError (one
    line) if the scenario's part for this source is invalid, before anything is started.
    ``start_order`` orders the collectors (lowest first: the process tree starts before the
    sources that ask for its pids). ``advice`` is what findings on the source's devices tell
    the user to do, by topic (``profile``, ``stacks``, ``input``, ``transfer``, ``collective``,
    ``device_query``): the driver's or framework's own tools, so rules stay neutral.
    """

    name: str
    label: str
    metrics: Sequence[Metric]
    entity_kinds: Sequence[EntityKind]
    collector: Callable[[], Collector] | None = None
    simulator: Callable[..., Any] | None = None
    start_order: int = 50
    check_scenario: Callable[[str], None] | None = None
    advice: Mapping[str, str] = field(default_factory=dict)
