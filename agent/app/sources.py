"""Which sources a recording starts, and their simulators: the one place the app picks collectors.

Every source comes from the registry (:func:`agent.registry.default_registry`), in its start
order; none is named here. A source that is absent (no NVML, no TPU runtime), broken, or a
plug-in that failed to load becomes a notice, never a failed run; only a problem with the
watched process itself (:class:`TargetError`) stops the start.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from agent.errors import CollectorUnavailable, TargetError, UsageError
from agent.registry import SourceRegistrationError, SourceRegistry, default_registry
from agent.source import CollectContext, Collector, SourceSpec

#: (kind, source, detail) of a source that did not start, turned into an event on the first tick.
Notice = tuple[str, str, dict[str, Any]]

#: The sources accelwatch ships, as pyproject.toml registers them (a test keeps the two equal).
#: Used only when their entry points are missing: a stale install or a checkout never installed.
BUILTIN_SOURCES = {
    "process": "collectors.process",
    "host": "collectors.host",
    "disk": "collectors.disk",
    "fabric": "collectors.fabric.source",
    "storage": "collectors.storage.source",
    "nvml": "collectors.nvml_source",
    "tpu": "collectors.tpu.source",
    "steps": "agent.catalog.steps",
}


def ensure_builtin_sources(registry: SourceRegistry) -> list[Notice]:
    """Register the shipped sources whose entry points are missing, with one warning notice."""
    broken = {n.source for n in registry.notices()}  # already reported: not twice
    missing = [n for n in BUILTIN_SOURCES if registry.get(n) is None and n not in broken]
    notices: list[Notice] = []
    for name in missing:
        try:
            registry.register(importlib.import_module(BUILTIN_SOURCES[name]).SPEC)
        except (ImportError, SourceRegistrationError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            notices.append(("source_broken", name, {"reason": reason, "severity": "warning"}))
    if missing:
        reason = (
            f"entry points of {', '.join(missing)} are not installed; using the built-in "
            "declarations (reinstall accelwatch: pip install -e .)"
        )
        notices.insert(0, ("source_fallback", "agent", {"reason": reason, "severity": "warning"}))
    return notices


def candidate_collectors(
    process_collector: Collector, registry: SourceRegistry | None = None
) -> tuple[list[Collector], list[Notice]]:
    """One collector per registered source that has one, in start order, and the notices.

    ``process_collector`` comes first and stands in for its source's factory: the session keeps
    it to know the tree's pids and whether the target lives. The steps source has no collector
    (the job reports it).
    """
    notices: list[Notice] = []
    if registry is None:  # the process-wide one; a test's own registry holds what it chose
        registry = default_registry()
        notices += ensure_builtin_sources(registry)
    notices += [
        ("source_broken", n.source, {"reason": n.reason, "severity": "warning"})
        for n in registry.notices()
    ]
    out: list[Collector] = [process_collector]
    for spec in registry.specs():
        if spec.name == process_collector.source or spec.collector is None:
            continue  # reported by the job itself (steps), not collected
        try:
            out.append(spec.collector())
        except ImportError as exc:  # its driver library is not installed
            notices.append(("collector_unavailable", spec.name, {"reason": str(exc)}))
        except Exception as exc:  # a broken source must not stop the recording
            reason = f"{type(exc).__name__}: {exc}"
            notices.append(
                ("collector_disabled", spec.name, {"reason": reason, "severity": "warning"})
            )
    return out, notices


def start_collectors(
    candidates: Sequence[Collector], ctx: CollectContext
) -> tuple[list[Collector], list[Notice]]:
    """Start each candidate; the ones that started, and a notice for each that did not."""
    started: list[Collector] = []
    notices: list[Notice] = []
    for collector in candidates:
        try:
            collector.start(ctx)
        except TargetError:
            raise
        except CollectorUnavailable as exc:
            notices.append(("collector_unavailable", collector.source, {"reason": str(exc)}))
            continue
        except Exception as exc:  # a broken source must not stop the recording
            reason = f"{type(exc).__name__}: {exc}"
            notices.append(
                ("collector_disabled", collector.source, {"reason": reason, "severity": "warning"})
            )
            continue
        started.append(collector)
    return started, notices


#: An accelerator source that found no device while another one did: recorded, not shown.
ABSENT = "source_absent"


def quiet_absent_accelerators(
    started: Sequence[Collector], notices: list[Notice], registry: SourceRegistry | None = None
) -> list[Notice]:
    """On a GPU machine no TPU is no news (and the reverse): once an accelerator source started,
    the others' ``collector_unavailable`` become ``source_absent``. With none started, each stays
    a notice, so a run without any accelerator says why."""
    registry = registry or default_registry()
    accelerators = {
        spec.name
        for spec in registry.specs()
        if any(k.kind == "accelerator" for k in spec.entity_kinds)
    }
    if not any(c.source in accelerators for c in started):
        return notices
    return [
        (ABSENT, source, detail)
        if kind == "collector_unavailable" and source in accelerators
        else (kind, source, detail)
        for kind, source, detail in notices
    ]


def load_simulation(scenario: str) -> Any:
    """The named scenario or .toml file, every source's part validated; else a UsageError."""
    from collectors.sim import ScenarioError, load_scenario

    try:
        return load_scenario(scenario)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None


def _simulated_specs(scenario: Any, registry: SourceRegistry) -> list[SourceSpec]:
    specs = []
    for name in scenario.sources:
        spec = registry.get(name)
        if spec is None or spec.simulator is None:
            simulated = [s.name for s in registry.specs() if s.simulator is not None]
            raise UsageError(
                f"scenario {scenario.name!r} simulates {name!r}, which no installed source can "
                f"simulate (sources with a simulator: {', '.join(simulated) or 'none'})"
            )
        specs.append(spec)
    return specs


def check_scenario(scenario: str, registry: SourceRegistry | None = None) -> None:
    """Fail before anything is created: an unknown scenario, an invalid part, a source it names
    that cannot simulate."""
    if registry is None:
        registry = default_registry()
        ensure_builtin_sources(registry)
    for spec in _simulated_specs(load_simulation(scenario), registry):
        if spec.check_scenario is not None:
            try:
                spec.check_scenario(scenario)
            except ValueError as exc:
                raise UsageError(str(exc)) from None


class Simulators:
    """The simulated parts a scenario installed, uninstalled together (last installed first)."""

    def __init__(self, installed: Sequence[Any] = ()) -> None:
        self.installed = list(installed)

    def uninstall(self) -> None:
        while self.installed:
            handle = self.installed.pop()
            if handle is not None:
                handle.uninstall()


def install_simulators(
    scenario: str,
    owner_pids: Callable[[], list[int]],
    registry: SourceRegistry | None = None,
) -> Simulators:
    """Install the simulator of each source ``scenario`` names; ``owner_pids`` hold the devices.

    Each simulator gets the scenario's name (or path) and installs its part (None: nothing).
    """
    if registry is None:
        registry = default_registry()
        ensure_builtin_sources(registry)
    loaded = load_simulation(scenario)
    simulators = Simulators()
    try:
        for spec in _simulated_specs(loaded, registry):
            assert spec.simulator is not None
            try:
                simulators.installed.append(spec.simulator(scenario, owner_pids))
            except ValueError as exc:  # the scenario's part for this source is invalid
                raise UsageError(str(exc)) from None
    except BaseException:
        simulators.uninstall()
        raise
    return simulators
