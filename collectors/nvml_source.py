"""The NVML source's declaration: its metrics, entity kinds, collector and simulator.

Kept apart from :mod:`collectors.nvml` so that registering the source imports no ``pynvml``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.catalog.gpu import METRICS, SOURCE
from agent.source import Collector, EntityKind, SourceSpec

_GPU_IDENTITY = {"hw.id": "{uuid}", "hw.name": "{name}", "hw.type": "gpu", "hw.vendor": "NVIDIA"}


def _collector() -> Collector:
    from collectors.nvml import NvmlCollector

    return NvmlCollector()


def _simulator(scenario: str, owner_pids: Callable[[], list[int]]) -> Any:
    """Patch pynvml with the scenario's simulated GPUs (maybe none), held by ``owner_pids``."""
    from collectors.sim import install, load_scenario

    return install(load_scenario(scenario), job_pids=owner_pids)


SPEC = SourceSpec(
    name=SOURCE,
    label="NVIDIA GPUs (NVML)",
    metrics=tuple(METRICS),
    entity_kinds=(
        EntityKind("accelerator", "gpu(?P<gpu>[0-9]+)", _GPU_IDENTITY),
        EntityKind(
            "accelerator.part",
            "gpu(?P<gpu>[0-9]+)/mig(?P<mig>[0-9]+)",
            {"hw.id": "{uuid}", "hw.name": "{name}", "hw.type": "gpu"},
        ),
        EntityKind(
            "link", "gpu(?P<gpu>[0-9]+)/nvlink(?P<link>[0-9]+)", {"accelwatch.gpu.nvlink": "{link}"}
        ),
        EntityKind(
            "accelerator.process", "gpu(?P<gpu>[0-9]+)/pid(?P<pid>[0-9]+)", {"process.pid": "{pid}"}
        ),
    ),
    collector=_collector,
    simulator=_simulator,
)
