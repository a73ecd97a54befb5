"""Which sources a recording starts, and their simulators: the one place the app picks collectors.

Every source comes from the registry (:func:`agent.registry.default_registry`), in its start
order; none is named here. A source that is absent (no NVML, no TPU runtime), broken, or a
plug-in that failed to load becomes a notice, never a failed run; only a problem with the
watched process itself (:class:`TargetError`) stops the start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agent.errors import CollectorUnavailable, TargetError, UsageError
from agent.registry import SourceRegistry, default_registry
from agent.source import CollectContext, Collector

#: (kind, source, detail) of a source that did not start, turned into an event on the first tick.
Notice = tuple[str, str, dict[str, Any]]


def candidate_collectors(
    process_collector: Collector, registry: SourceRegistry | None = None
) -> tuple[list[Collector], list[Notice]]:
    """One collector per registered source that has one, in start order, and the notices.

    ``process_collector`` stands in for its source's factory: the session keeps it to know the
    tree's pids and whether the target lives.
    """
    registry = registry or default_registry()
    notices: list[Notice] = [
        ("source_broken", n.source, {"reason": n.reason, "severity": "warning"})
        for n in registry.notices()
    ]
    out: list[Collector] = []
    for spec in registry.specs():
        if spec.name == process_collector.source:
            out.append(process_collector)
            continue
        if spec.collector is None:
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


def _simulated_specs(scenario: str, registry: SourceRegistry) -> list[Any]:
    from collectors.sim import ScenarioError, scenario_sources

    try:
        names = scenario_sources(scenario)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    specs = []
    for name in names:
        spec = registry.get(name)
        if spec is None or spec.simulator is None:
            simulated = [s.name for s in registry.specs() if s.simulator is not None]
            raise UsageError(
                f"scenario {scenario!r} simulates {name!r}, which no installed source can "
                f"simulate (sources with a simulator: {', '.join(simulated) or 'none'})"
            )
        specs.append(spec)
    return specs


def check_scenario(scenario: str, registry: SourceRegistry | None = None) -> None:
    """Fail before anything is created: an unknown scenario or source, or an invalid part."""
    for spec in _simulated_specs(scenario, registry or default_registry()):
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
    """Install each simulated source of ``scenario``; ``owner_pids`` hold the devices."""
    simulators = Simulators()
    try:
        for spec in _simulated_specs(scenario, registry or default_registry()):
            try:
                simulators.installed.append(spec.simulator(scenario, owner_pids))
            except ValueError as exc:  # the scenario's part for this source is invalid
                raise UsageError(str(exc)) from None
    except BaseException:
        simulators.uninstall()
        raise
    return simulators
