"""Which sources a recording starts, and their simulators: the one place the app picks collectors.

A source that is absent (no NVML, no TPU runtime) or broken becomes a notice, never a failed run;
only a problem with the watched process itself (:class:`TargetError`) stops the start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agent.errors import CollectorUnavailable, TargetError
from agent.source import CollectContext, Collector

#: (kind, source, detail) of a source that did not start, turned into an event on the first tick.
Notice = tuple[str, str, dict[str, Any]]


def candidate_collectors(process_collector: Collector) -> list[Collector]:
    """The watched tree's collector first, then the host, then the optional sources."""
    from collectors.host import HostCollector

    out: list[Collector] = [process_collector, HostCollector()]
    try:
        from collectors.nvml import NvmlCollector
    except ImportError:
        return out
    out.append(NvmlCollector())
    return out


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


def install_simulator(scenario_name: str, owner_pids: Callable[[], list[int]]) -> Any:
    """Install the scenario's simulated devices; ``owner_pids`` hold them (the watched process)."""
    from collectors.sim import install, load_scenario

    return install(load_scenario(scenario_name), job_pids=owner_pids)
