"""Simulated NVML driver: realistic GPUs and named scenarios without a GPU.

with collectors.sim.install("straggler"):
    pynvml.nvmlInit()  # talks to eight simulated H100s
"""

from collectors.sim.driver import SimulatedNvml, install
from collectors.sim.scenario import (
    Scenario,
    ScenarioError,
    ScenarioInfo,
    list_scenarios,
    load_scenario,
    scenario_sources,
)

__all__ = [
    "Scenario",
    "ScenarioError",
    "ScenarioInfo",
    "SimulatedNvml",
    "install",
    "list_scenarios",
    "load_scenario",
    "scenario_sources",
]
