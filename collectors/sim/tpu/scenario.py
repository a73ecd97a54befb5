"""The ``[tpu]`` table of a scenario: which chips, when the runtime runs, how the job behaves.

```toml
[tpu]
chip = "v5e"            # v2 v3 v4 v5e v5p v6e 7x
chips = 8
runtime_up_s = 0        # libtpu's metrics service answers from here (a program started)
runtime_lost_s = 30     # ... and stops answering here (optional)
unsupported = []        # runtime metrics this libtpu does not offer
[tpu.workload]          # steady levels of every chip (signals below)
duty_cycle = 0.95
[tpu.overrides.3]       # per chip
duty_cycle = 0.6
[[tpu.effects]]         # windows, as the GPU effects: start_s end_s every_s for_s chips set ramp
start_s = 5
set = { duty_cycle = 0.3 }
[tpu.metadata]          # the simulated GCE metadata server (all optional)
accelerator_type = "v5litepod-8"   # default: from chip and chips
worker_number = 0
workers = 1
runtime_version = "v2-alpha-tpuv5-lite"
delay_s = 0             # every answer this late (the collector gives up after 1 s)
absent = []             # attributes the node lacks
off = false             # no metadata server: as outside GCP
```
Parsing validates everything up front, with the GPU scenarios' one-line errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from collectors.sim.windows import since_window_opened
from collectors.tpu.discovery import CHIP_TYPES, ChipType

SIGNALS: dict[str, float] = {
    "duty_cycle": 0.0,  # fraction
    "hbm_used_gib": 0.0,
    "hbm_utilization": 0.0,  # fraction
    "idle_s": 0.0,
    "queue_size": 0.0,
    "hlo_exec_us": 0.0,
    "dcn_latency_us": 0.0,
    "h2d_latency_us": 0.0,
    "d2h_latency_us": 0.0,
    "collective_latency_us": 0.0,
    "transfers_per_s": 100.0,
}
FRACTIONS = frozenset({"duty_cycle", "hbm_utilization"})


class TpuScenarioError(ValueError):
    """Raised with a one-line message; the GPU loader re-raises it as a ScenarioError."""


@dataclass(frozen=True)
class TpuEffect:
    label: str
    chips: tuple[int, ...] | None
    start_s: float = 0.0
    end_s: float = math.inf
    every_s: float | None = None
    for_s: float | None = None
    set: dict[str, float] = field(default_factory=dict)
    ramp: dict[str, float] = field(default_factory=dict)

    def active(self, t: float) -> bool:
        return (
            since_window_opened(t, self.start_s, self.end_s, self.every_s, self.for_s) is not None
        )


@dataclass(frozen=True)
class TpuScenario:
    chip: ChipType
    chips: int
    runtime_up_s: float
    runtime_lost_s: float | None
    unsupported: frozenset[str]
    workload: dict[str, float]
    overrides: dict[int, dict[str, float]]
    effects: tuple[TpuEffect, ...]
    #: The ``[tpu.metadata]`` table, validated (see the module docstring).
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def devices(self) -> int:
        return self.chips * self.chip.devices_per_chip

    def describe(self) -> str:
        name = "TPU7x" if self.chip.name == "7x" else f"TPU {self.chip.name}"
        return f"{self.chips}x {name}"

    def runtime_up(self, t: float) -> bool:
        lost = self.runtime_lost_s
        return t >= self.runtime_up_s and (lost is None or t < lost)

    def levels(self, chip: int, t: float) -> dict[str, float]:
        """The signals of one chip at scenario time ``t`` (seconds since the start)."""
        out = {**SIGNALS, **self.workload, **self.overrides.get(chip, {})}
        for e in self.effects:
            if e.chips is not None and chip not in e.chips:
                continue
            if e.active(t):
                out.update(e.set)
            if e.ramp and t >= e.start_s:
                span = min(t, e.end_s) - e.start_s
                for k, per_s in e.ramp.items():
                    out[k] = out[k] + per_s * span
        for k in FRACTIONS:
            out[k] = min(1.0, max(0.0, out[k]))
        hbm_gib = self.chip.hbm_bytes / (1 << 30)
        out["hbm_used_gib"] = min(hbm_gib, max(0.0, out["hbm_used_gib"]))
        return out


def parse_tpu(table: Any) -> TpuScenario:
    if not isinstance(table, dict):
        raise TpuScenarioError("[tpu] must be a table")
    allowed = {
        "chip",
        "chips",
        "runtime_up_s",
        "runtime_lost_s",
        "unsupported",
        "workload",
        "overrides",
        "effects",
        "metadata",
    }
    _keys(table, "[tpu]", allowed)
    name = table.get("chip")
    if name not in CHIP_TYPES:
        raise TpuScenarioError(f"[tpu] chip {name!r} unknown (known: {', '.join(CHIP_TYPES)})")
    chips = table.get("chips", 1)
    if isinstance(chips, bool) or not isinstance(chips, int) or not 1 <= chips <= 64:
        raise TpuScenarioError("[tpu] chips must be an integer between 1 and 64")
    up = _num(table, "runtime_up_s", "[tpu]", 0.0)
    lost = _num(table, "runtime_lost_s", "[tpu]", None)
    if lost is not None and lost <= (up or 0.0):
        raise TpuScenarioError("[tpu] runtime_lost_s must be after runtime_up_s")
    unsupported = table.get("unsupported", [])
    if not isinstance(unsupported, list) or not all(isinstance(u, str) for u in unsupported):
        raise TpuScenarioError("[tpu] unsupported must be a list of runtime metric names")
    workload = _signals(table.get("workload", {}), "[tpu.workload]")
    overrides = {}
    raw_over = table.get("overrides", {})
    if not isinstance(raw_over, dict):
        raise TpuScenarioError("[tpu.overrides] must be a table")
    for key, sub in raw_over.items():
        overrides[_chip_index(key, chips, "[tpu.overrides]")] = _signals(
            sub, f"[tpu.overrides.{key}]"
        )
    raw_effects = table.get("effects", [])
    if not isinstance(raw_effects, list):
        raise TpuScenarioError("[tpu] effects must be an array of tables ([[tpu.effects]])")
    effects = tuple(_effect(e, i, chips) for i, e in enumerate(raw_effects))
    return TpuScenario(
        chip=CHIP_TYPES[name],
        chips=chips,
        runtime_up_s=up or 0.0,
        runtime_lost_s=lost,
        unsupported=frozenset(unsupported),
        workload=workload,
        overrides=overrides,
        effects=effects,
        metadata=_metadata(table.get("metadata", {})),
    )


_METADATA_TYPES: dict[str, type | tuple[type, ...]] = {
    "accelerator_type": str,
    "worker_number": int,
    "workers": int,
    "runtime_version": str,
    "delay_s": (int, float),
    "absent": list,
    "off": bool,
}
METADATA_ATTRIBUTES = (
    "accelerator-type",
    "agent-worker-number",
    "worker-network-endpoints",
    "tpu-env",
)


def _metadata(raw: Any) -> dict[str, Any]:
    where = "[tpu.metadata]"
    if not isinstance(raw, dict):
        raise TpuScenarioError(f"{where} must be a table")
    _keys(raw, where, set(_METADATA_TYPES))
    for key, value in raw.items():
        want = _METADATA_TYPES[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise TpuScenarioError(f"{where}: {key} has the wrong type")
    if raw.get("workers", 1) < 1 or not 0 <= raw.get("worker_number", 0) < raw.get("workers", 1):
        raise TpuScenarioError(f"{where}: worker_number must be within 0..workers-1")
    if raw.get("delay_s", 0) < 0:
        raise TpuScenarioError(f"{where}: delay_s must not be negative")
    unknown = [a for a in raw.get("absent", []) if a not in METADATA_ATTRIBUTES]
    if unknown:
        raise TpuScenarioError(
            f"{where}: absent names {unknown[0]!r} (known: {', '.join(METADATA_ATTRIBUTES)})"
        )
    return dict(raw)


def _effect(raw: Any, index: int, chips: int) -> TpuEffect:
    where = f"[[tpu.effects]] #{index + 1}"
    if not isinstance(raw, dict):
        raise TpuScenarioError(f"{where} must be a table")
    _keys(raw, where, {"label", "chips", "start_s", "end_s", "every_s", "for_s", "set", "ramp"})
    label = str(raw.get("label", f"effect {index + 1}"))
    sel = raw.get("chips", "all")
    if sel == "all":
        selected = None
    elif isinstance(sel, list):
        selected = tuple(_chip_index(str(c), chips, where) for c in sel)
    else:
        raise TpuScenarioError(f'{where}: chips must be "all" or a list of chip indices')
    start = _num(raw, "start_s", where, 0.0) or 0.0
    end = _num(raw, "end_s", where, math.inf)
    every = _num(raw, "every_s", where, None)
    for_s = _num(raw, "for_s", where, None)
    if (every is None) != (for_s is None):
        raise TpuScenarioError(f"{where}: every_s and for_s go together")
    if every is not None and for_s is not None and not 0 < for_s <= every:
        raise TpuScenarioError(f"{where}: for_s must be in (0, every_s]")
    if end is not None and end <= start:
        raise TpuScenarioError(f"{where}: end_s must be after start_s")
    set_ = _signals(raw.get("set", {}), f"{where} set")
    ramp = _signals(raw.get("ramp", {}), f"{where} ramp", fractions=False)
    if not set_ and not ramp:
        raise TpuScenarioError(f"{where}: needs set or ramp")
    return TpuEffect(
        label, selected, start, end if end is not None else math.inf, every, for_s, set_, ramp
    )


def _signals(table: Any, where: str, *, fractions: bool = True) -> dict[str, float]:
    if not isinstance(table, dict):
        raise TpuScenarioError(f"{where} must be a table")
    out = {}
    for k, v in table.items():
        if k not in SIGNALS:
            raise TpuScenarioError(f"{where}: unknown signal {k!r} (known: {', '.join(SIGNALS)})")
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            raise TpuScenarioError(f"{where}: {k} must be a number")
        if fractions and k in FRACTIONS and not 0 <= v <= 1:
            raise TpuScenarioError(f"{where}: {k} is a fraction and must be within 0..1")
        if fractions and v < 0:
            raise TpuScenarioError(f"{where}: {k} must not be negative")
        out[k] = float(v)
    return out


def _num(table: dict[str, Any], key: str, where: str, default: float | None) -> float | None:
    if key not in table:
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or v < 0:
        raise TpuScenarioError(f"{where}: {key} must be a non-negative number")
    return float(v)


def _chip_index(key: str, chips: int, where: str) -> int:
    try:
        i = int(key)
    except ValueError:
        raise TpuScenarioError(f"{where}: {key!r} is not a chip index") from None
    if not 0 <= i < chips:
        raise TpuScenarioError(f"{where}: chip {i} out of range (0..{chips - 1})")
    return i


def _keys(table: dict[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise TpuScenarioError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
