"""What a scenario is, once parsed: its hardware, workload levels and effects over time.

The data the simulated driver and engine read (:mod:`collectors.sim.scenario_parse` builds it
from a TOML file and validates every value, so they never meet a bad one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pynvml

from collectors.sim.devices import DeviceModel
from collectors.sim.tpu.scenario import TpuScenario

# Time-varying per-GPU signals a workload, an override or an effect can set.
# *_activity levels and nvlink rates apply while kernels run: the engine
# multiplies them by `busy`. PCIe rates are copy-engine traffic and are not.
SIGNAL_DEFAULTS: dict[str, float] = {
    "busy": 0.0,
    "sm_activity": 0.0,
    "sm_occupancy": 0.0,
    "tensor_activity": 0.0,
    "dram_activity": 0.0,
    "fp16_activity": 0.0,
    "fp32_activity": 0.0,
    "fp64_activity": 0.0,
    "nvlink_tx_gbps": 0.0,
    "nvlink_rx_gbps": 0.0,
    "pcie_tx_gbps": 0.0,
    "pcie_rx_gbps": 0.0,
    "memory_used_gib": 0.0,
    "temperature_c": 68.0,
    "clock_factor": 1.0,
    "power_limit_w": 0.0,
    "noise": 0.03,
}
SIGNALS: tuple[str, ...] = tuple(SIGNAL_DEFAULTS)
FRACTION_SIGNALS = frozenset(
    {
        "busy",
        "sm_activity",
        "sm_occupancy",
        "tensor_activity",
        "dram_activity",
        "fp16_activity",
        "fp32_activity",
        "fp64_activity",
        "noise",
    }
)

THROTTLE_REASONS: dict[str, int] = {
    "applications_clocks": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
    "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
    "sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
    "hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
}

DEFAULT_DRIVER_VERSION = "550.127.05"
DEFAULT_CUDA_VERSION = 12040
_MAX_MIG_SLICES = 7


class ScenarioError(ValueError):
    """A scenario name is unknown or a scenario file is invalid (one-line message)."""


@dataclass(frozen=True, slots=True)
class ScenarioInfo:
    """What `accelwatch scenarios` lists; JSON-serialisable via dataclasses.asdict."""

    name: str
    hardware: str
    gpu_count: int
    summary: str
    path: str


@dataclass(frozen=True, slots=True)
class Hardware:
    model: DeviceModel
    count: int
    mig: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"{self.count}x {self.model.short_name}"
        return f"{text} (MIG {' + '.join(self.mig)})" if self.mig else text


@dataclass(frozen=True, slots=True)
class Effect:
    """A change applied to some GPUs at a point in time or over a window.

    Windows run from `start_s` to `end_s`; with `every_s`/`for_s` they repeat
    (active for `for_s` at the start of every `every_s`). Point actions
    (xid, lost, counter_reset) fire at `at_s`, repeating every `every_s`.
    """

    label: str
    gpus: tuple[int, ...] | None
    start_s: float = 0.0
    end_s: float = math.inf
    every_s: float | None = None
    for_s: float | None = None
    at_s: float | None = None
    set: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    ramp: dict[str, float] = field(default_factory=dict)
    throttle: int = 0
    xid: int | None = None
    lost: bool = False
    counter_reset: bool = False

    @property
    def is_point(self) -> bool:
        return self.at_s is not None

    def occurrences(self, until_s: float) -> int:
        """How many times a point effect has fired by `until_s` (inclusive)."""
        if self.at_s is None or until_s < self.at_s:
            return 0
        if not self.every_s:
            return 1
        return int((until_s - self.at_s) // self.every_s) + 1


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    path: str
    seed: int
    duration_s: float
    hardware: Hardware
    driver_version: str
    cuda_version: int
    missing_symbols: frozenset[str]
    processes_per_gpu: int
    counter_offset: int
    workload: dict[str, float]
    overrides: dict[int, dict[str, float]]
    effects: tuple[Effect, ...]
    #: Field ids the driver answers with NOT_SUPPORTED (``[driver] missing_fields``).
    missing_fields: frozenset[int] = frozenset()
    #: The ``[tpu]`` table (collectors/sim/tpu/scenario.py); a TPU-only scenario has no GPUs.
    tpu: TpuScenario | None = None
    #: The sources whose simulators this scenario installs, in order (each reads its own part).
    sources: tuple[str, ...] = ("nvml",)
    #: Each named source's own table, as written (``[dummy]``): what a plug-in's simulator reads.
    parts: dict[str, Any] = field(default_factory=dict)

    @property
    def gpu_count(self) -> int:
        return self.hardware.count

    def info(self) -> ScenarioInfo:
        hardware = self.hardware.describe() if self.gpu_count else ""
        if self.tpu is not None:
            hardware = " + ".join(h for h in (hardware, self.tpu.describe()) if h)
        return ScenarioInfo(self.name, hardware, self.gpu_count, self.summary, self.path)

    def levels(self, gpu: int) -> dict[str, float]:
        """Steady-state signal levels of one GPU before effects."""
        return {**SIGNAL_DEFAULTS, **self.workload, **self.overrides.get(gpu, {})}
