"""Simulated InfiniBand ports and job mounts: fake sysfs/procfs trees driven by a scenario."""

from __future__ import annotations

from typing import Any


def install(scenario: str, source: str) -> Any:
    from collectors.sim.fabric_storage.sim import install as _install

    return _install(scenario, source)
