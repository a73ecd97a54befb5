"""Scenario files: what simulated hardware exists and how it behaves over time.

A scenario is a TOML file (format in docs/scenarios.md). Named scenarios ship
as package data in `collectors/sim/scenarios/`; users may pass their own path.
This module finds and loads them; what a scenario holds is in
:mod:`collectors.sim.scenario_model`, and the parsing that validates everything up front (so
the engine never meets a bad value) in :mod:`collectors.sim.scenario_parse`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

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
    ScenarioInfo,
)
from collectors.sim.scenario_parse import parse_scenario

__all__ = [
    "DEFAULT_CUDA_VERSION",
    "DEFAULT_DRIVER_VERSION",
    "FRACTION_SIGNALS",
    "SIGNALS",
    "SIGNAL_DEFAULTS",
    "THROTTLE_REASONS",
    "Effect",
    "Hardware",
    "Scenario",
    "ScenarioError",
    "ScenarioInfo",
    "list_scenarios",
    "load_scenario",
    "parse_scenario",
    "scenario_names",
    "scenario_sources",
]


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
