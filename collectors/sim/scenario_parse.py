"""Scenario TOML → :class:`~collectors.sim.scenario_model.Scenario`, validated up front.

Every table, key and value is checked here (one-line :class:`ScenarioError` naming the file and
the place), so the engine never meets a bad value. The format is in docs/scenarios.md.
"""

from __future__ import annotations

import math
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport has the same API
    import tomli as tomllib  # type: ignore[no-redef]

import pynvml

from collectors.sim.devices import MODELS
from collectors.sim.scenario_model import (
    DEFAULT_CUDA_VERSION,
    DEFAULT_DRIVER_VERSION,
    FRACTION_SIGNALS,
    SIGNAL_DEFAULTS,
    SIGNALS,
    THROTTLE_REASONS,
    Effect,
    Hardware,
    Scenario,
    ScenarioError,
)
from collectors.sim.tpu.scenario import TpuScenarioError, parse_tpu

_MAX_MIG_SLICES = 7


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
    _check_keys(drv, "[driver]", {"version", "cuda_version", "missing_symbols", "missing_fields"})
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
        missing_fields=_field_ids(_get(drv, "missing_fields", list, "[driver]", default=[])),
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


def _field_ids(names: list[object]) -> frozenset[int]:
    """``[driver] missing_fields``: NVML field names (``NVML_FI_DEV_POWER_AVERAGE``) this
    driver answers with NOT_SUPPORTED, as a driver older than those field ids does."""
    ids = set()
    for name in names:
        value = getattr(pynvml, name, None) if isinstance(name, str) else None
        if not (isinstance(name, str) and name.startswith("NVML_FI_") and isinstance(value, int)):
            raise ScenarioError(f"[driver] missing_fields: {name!r} is not an NVML field id name")
        ids.add(value)
    return frozenset(ids)
