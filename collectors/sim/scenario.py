"""Scenario files: what simulated hardware exists and how it behaves over time.

A scenario is a TOML file (format in docs/scenarios.md). Named scenarios ship
as package data in `collectors/sim/scenarios/`; users may pass their own path.
Parsing validates everything up front so the engine never meets a bad value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pynvml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport has the same API
    import tomli as tomllib  # type: ignore[no-redef]

from collectors.sim.devices import MODELS, DeviceModel
from collectors.sim.tpu.scenario import TpuScenario, TpuScenarioError, parse_tpu

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


def _scenario_dir():  # -> importlib.resources.abc.Traversable
    return resources.files("collectors.sim").joinpath("scenarios")


def scenario_names() -> list[str]:
    return sorted(p.name[:-5] for p in _scenario_dir().iterdir() if p.name.endswith(".toml"))


def list_scenarios() -> list[ScenarioInfo]:
    """Every named scenario shipped with accelwatch, sorted by name."""
    return [load_scenario(name).info() for name in scenario_names()]


def load_scenario(name_or_path: str) -> Scenario:
    """Load a named scenario or a user's .toml file."""
    text, path, default_name = _scenario_text(name_or_path)
    return parse_scenario(text, path, default_name=default_name)


def scenario_sources(name_or_path: str) -> tuple[str, ...]:
    """Which sources a scenario simulates (see :attr:`Scenario.sources`)."""
    return load_scenario(name_or_path).sources


def _sources(doc: dict[str, Any], has_tpu: bool) -> tuple[str, ...]:
    """A top-level ``sources = [...]``, else NVML (its simulated driver hides real GPUs, even
    when it shows none) plus TPU when there is a ``[tpu]`` table."""
    if "sources" not in doc:
        return ("nvml", "tpu") if has_tpu else ("nvml",)
    sources = doc["sources"]
    if (
        not isinstance(sources, list)
        or not sources
        or not all(isinstance(s, str) and s for s in sources)
    ):
        raise ScenarioError("sources must be a non-empty list of source names")
    return tuple(dict.fromkeys(sources))


def _scenario_text(name_or_path: str) -> tuple[str, str, str]:
    """(TOML text, path, default name) of a named scenario or a user's .toml file."""
    entry = _scenario_dir().joinpath(f"{name_or_path}.toml")
    if "/" not in name_or_path and not name_or_path.endswith(".toml") and entry.is_file():
        return entry.read_text(encoding="utf-8"), str(entry), name_or_path
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(scenario_names())
        raise ScenarioError(
            f"unknown scenario {name_or_path!r}: not a named scenario ({known}) nor a file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    return text, str(path), path.stem


def parse_scenario(text: str, path: str = "<string>", *, default_name: str = "custom") -> Scenario:
    """Parse and validate scenario TOML text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    try:
        return _build(doc, path, default_name)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def _build(doc: dict[str, Any], path: str, default_name: str) -> Scenario:
    # A source's own part of the scenario is the table named after it (``[tpu]``, ``[dummy]``).
    sources = _sources(doc, "tpu" in doc)
    _check_keys(
        doc,
        "top level",
        {
            "name",
            "sources",
            "summary",
            "seed",
            "duration_s",
            "hardware",
            "driver",
            "job",
            "counters",
            "workload",
            "overrides",
            "effects",
            "tpu",
            *sources,
        },
    )
    tpu = None
    if "tpu" in doc:
        try:
            tpu = parse_tpu(doc["tpu"])
        except TpuScenarioError as exc:
            raise ScenarioError(str(exc)) from None
    hw = _table(doc, "hardware", required=tpu is None and "nvml" in sources)
    if not hw:  # a TPU-only scenario (or one without NVML): the simulated driver shows no GPU
        hw = {"model": next(iter(MODELS)), "count": 0}
    _check_keys(hw, "[hardware]", {"model", "count", "mig"})
    model_key = _get(hw, "model", str, "[hardware]")
    if model_key not in MODELS:
        raise ScenarioError(f"[hardware] model {model_key!r} unknown (known: {', '.join(MODELS)})")
    model = MODELS[model_key]
    count = _get(hw, "count", int, "[hardware]", default=1)
    if not 1 <= count <= 64 and not ((tpu is not None or "nvml" not in sources) and count == 0):
        raise ScenarioError("[hardware] count must be between 1 and 64")
    mig = tuple(_get(hw, "mig", list, "[hardware]", default=[]))
    if mig:
        if not model.mig_capable:
            raise ScenarioError(f"[hardware] {model.short_name} does not support MIG")
        try:
            slices = sum(model.mig_profile(str(p)).slices for p in mig)
        except KeyError as exc:
            names = ", ".join(p.name for p in model.mig_profiles)
            raise ScenarioError(
                f"[hardware] unknown MIG profile {exc.args[0]!r} (known: {names})"
            ) from None
        if slices > _MAX_MIG_SLICES:
            raise ScenarioError(
                f"[hardware] MIG layout uses {slices} slices, the GPU has {_MAX_MIG_SLICES}"
            )

    drv = _table(doc, "driver")
    _check_keys(drv, "[driver]", {"version", "cuda_version", "missing_symbols"})
    driver_version = _get(drv, "version", str, "[driver]", default=DEFAULT_DRIVER_VERSION)
    try:
        int(driver_version.split(".")[0])
    except ValueError:
        raise ScenarioError(
            f"[driver] version {driver_version!r} is not like '550.127.05'"
        ) from None
    job = _table(doc, "job")
    _check_keys(job, "[job]", {"processes_per_gpu"})
    counters = _table(doc, "counters")
    _check_keys(counters, "[counters]", {"offset"})

    workload = _signals(_table(doc, "workload"), "[workload]")
    overrides: dict[int, dict[str, float]] = {}
    for key, table in _table(doc, "overrides").items():
        gpu = _gpu_index(key, count, "[overrides]")
        if not isinstance(table, dict):
            raise ScenarioError(f"[overrides.{key}] must be a table")
        overrides[gpu] = _signals(table, f"[overrides.{key}]")

    raw_effects = doc.get("effects", [])
    if not isinstance(raw_effects, list):
        raise ScenarioError("effects must be an array of tables ([[effects]])")
    effects = tuple(_effect(e, i, count) for i, e in enumerate(raw_effects))

    duration = float(_get(doc, "duration_s", (int, float), "top level", default=60.0))
    if duration <= 0:
        raise ScenarioError("duration_s must be positive")
    return Scenario(
        name=_get(doc, "name", str, "top level", default=default_name),
        summary=_get(doc, "summary", str, "top level", default=""),
        path=path,
        seed=_get(doc, "seed", int, "top level", default=0),
        duration_s=duration,
        hardware=Hardware(model, count, tuple(str(p) for p in mig)),
        driver_version=driver_version,
        cuda_version=_get(drv, "cuda_version", int, "[driver]", default=DEFAULT_CUDA_VERSION),
        missing_symbols=frozenset(_get(drv, "missing_symbols", list, "[driver]", default=[])),
        processes_per_gpu=_get(job, "processes_per_gpu", int, "[job]", default=1),
        counter_offset=_get(counters, "offset", int, "[counters]", default=0),
        workload=workload,
        overrides=overrides,
        effects=effects,
        tpu=tpu,
        sources=sources,
        parts={name: doc[name] for name in sources if isinstance(doc.get(name), dict)},
    )


def _effect(raw: Any, index: int, count: int) -> Effect:
    where = f"[[effects]] #{index + 1}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where} must be a table")
    _check_keys(
        raw,
        where,
        {
            "label",
            "gpus",
            "at_s",
            "start_s",
            "end_s",
            "every_s",
            "for_s",
            "set",
            "scale",
            "ramp",
            "throttle",
            "xid",
            "lost",
            "counter_reset",
        },
    )
    label = _get(raw, "label", str, where, default=f"effect {index + 1}")
    where = f"[[effects]] {label!r}"
    gpus_raw = raw.get("gpus", "all")
    if gpus_raw == "all":
        gpus = None
    elif isinstance(gpus_raw, list) and all(isinstance(g, int) for g in gpus_raw):
        gpus = tuple(_gpu_index(str(g), count, where) for g in gpus_raw)
    else:
        raise ScenarioError(f'{where}: gpus must be "all" or a list of GPU indices')

    names = {"throttle": 0}
    reasons = _get(raw, "throttle", list, where, default=[])
    for reason in reasons:
        if reason not in THROTTLE_REASONS:
            raise ScenarioError(
                f"{where}: unknown throttle reason {reason!r} (known: {', '.join(THROTTLE_REASONS)})"
            )
        names["throttle"] |= THROTTLE_REASONS[reason]
    xid = _get(raw, "xid", int, where, default=None)
    lost = _get(raw, "lost", bool, where, default=False)
    reset = _get(raw, "counter_reset", bool, where, default=False)
    at_s = _num(raw, "at_s", where)
    every_s = _num(raw, "every_s", where)
    for_s = _num(raw, "for_s", where)
    start_s = _num(raw, "start_s", where)
    end_s = _num(raw, "end_s", where)
    window = {
        "set": _signals(_get(raw, "set", dict, where, default={}), f"{where} set"),
        "scale": _signals(
            _get(raw, "scale", dict, where, default={}), f"{where} scale", fractions=False
        ),
        "ramp": _signals(
            _get(raw, "ramp", dict, where, default={}), f"{where} ramp", fractions=False
        ),
    }
    has_window_action = any(window.values()) or names["throttle"]
    has_point_action = xid is not None or lost or reset
    if has_window_action == has_point_action:
        raise ScenarioError(
            f"{where}: needs either window actions (set/scale/ramp/throttle) "
            "or point actions (xid/lost/counter_reset), not both or neither"
        )
    if every_s is not None and every_s <= 0:
        raise ScenarioError(f"{where}: every_s must be positive")
    if has_point_action:
        if at_s is None or start_s is not None or end_s is not None or for_s is not None:
            raise ScenarioError(
                f"{where}: xid/lost/counter_reset take at_s (and optionally every_s)"
            )
        if lost and every_s is not None:
            raise ScenarioError(f"{where}: a GPU is lost once; drop every_s")
        return Effect(
            label, gpus, at_s=at_s, every_s=every_s, xid=xid, lost=lost, counter_reset=reset
        )
    if at_s is not None:
        raise ScenarioError(f"{where}: window actions take start_s/end_s, not at_s")
    if (every_s is None) != (for_s is None):
        raise ScenarioError(f"{where}: every_s and for_s go together")
    if for_s is not None and every_s is not None and not 0 < for_s <= every_s:
        raise ScenarioError(f"{where}: for_s must be in (0, every_s]")
    start = start_s if start_s is not None else 0.0
    end = end_s if end_s is not None else math.inf
    if end <= start:
        raise ScenarioError(f"{where}: end_s must be after start_s")
    return Effect(
        label,
        gpus,
        start_s=start,
        end_s=end,
        every_s=every_s,
        for_s=for_s,
        throttle=names["throttle"],
        **window,
    )


def _signals(table: dict[str, Any], where: str, *, fractions: bool = True) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in table.items():
        if key not in SIGNAL_DEFAULTS:
            raise ScenarioError(f"{where}: unknown signal {key!r} (known: {', '.join(SIGNALS)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ScenarioError(f"{where}: {key} must be a number")
        if fractions and key in FRACTION_SIGNALS and not 0.0 <= value <= 1.0:
            raise ScenarioError(
                f"{where}: {key} is a fraction and must be within 0..1, got {value}"
            )
        if fractions and value < 0:
            raise ScenarioError(f"{where}: {key} must not be negative")
        out[key] = float(value)
    return out


def _table(doc: dict[str, Any], key: str, *, required: bool = False) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        if required:
            raise ScenarioError(f"missing [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise ScenarioError(f"{key} must be a table")
    return value


def _get(table: dict[str, Any], key: str, kind: Any, where: str, **kw: Any) -> Any:
    if key not in table:
        if "default" in kw:
            return kw["default"]
        raise ScenarioError(f"{where}: missing {key}")
    value = table[key]
    if isinstance(value, bool) and kind is not bool:
        raise ScenarioError(f"{where}: {key} has the wrong type")
    if not isinstance(value, kind):
        raise ScenarioError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


def _num(table: dict[str, Any], key: str, where: str) -> float | None:
    value = _get(table, key, (int, float), where, default=None)
    if value is not None and (value < 0 or math.isnan(value)):
        raise ScenarioError(f"{where}: {key} must be a non-negative number")
    return None if value is None else float(value)


def _gpu_index(key: str, count: int, where: str) -> int:
    try:
        gpu = int(key)
    except ValueError:
        raise ScenarioError(f"{where}: {key!r} is not a GPU index") from None
    if not 0 <= gpu < count:
        raise ScenarioError(f"{where}: GPU {gpu} out of range (0..{count - 1})")
    return gpu


def _check_keys(table: dict[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
