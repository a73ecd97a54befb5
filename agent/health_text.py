"""Health in words: what the UI header and the headless line say about consumers and the store.

Health is a flat mapping of ``<owner>.<name>`` keys (``otlp.failed_exports``, ``store.state``,
``analysis.cpu_s``) merged from every writer. A user wants states, not counters: an owner is
shown only when its ``<owner>.state`` is not ok, its ``<owner>.error`` is set, or one of its
counters counts something lost or failed; measurements (``analysis.cpu_s``) stay internal.

A non-ok ``state`` is a sentence that stands alone (``disk full: 12 ticks buffered, 0
dropped``); an ``error`` is a reason the problem counters follow (``collector down:
127.0.0.1:4317, 3 failed exports``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Recording keys the header words itself (samples, ticks, disabled sources, store error).
RECORDING_KEYS = frozenset({"samples", "dropped_ticks", "missed_ticks", "disabled", "store_error"})
#: Owner prefix → the word a user knows it by.
OWNER_LABELS = {
    "otlp": "OTLP export",
    "prometheus": "Prometheus",
    "export": "export",
    "tracking": "training client",
}
_OK_STATES = frozenset({"", "ok", "running", "idle", "ready"})
#: A counter is worth showing when its name says something was lost or went wrong.
_PROBLEM_WORDS = ("failed", "dropped", "lost", "error", "capped", "skipped")
#: Owners that print their own stderr line when they fail (the store does).
SELF_REPORTING = frozenset({"store"})


@dataclass(frozen=True)
class HealthPhrase:
    """``OTLP export: collector down: 127.0.0.1:4317, 3 failed exports``; ``bad`` while the
    owner's state is not ok (a recovered exporter keeps its count, not its warning)."""

    owner: str
    text: str
    bad: bool


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def health_phrases(health: Mapping[str, Any]) -> list[HealthPhrase]:
    """One phrase per owner that has something to say, in owner order."""
    owners: dict[str, dict[str, Any]] = {}
    for key, value in health.items():
        owner, dot, name = key.partition(".")
        if key in RECORDING_KEYS or not dot:
            continue
        owners.setdefault(owner, {})[name] = value
    phrases = []
    for owner in sorted(owners):
        values = owners[owner]
        state = str(values.get("state") or "").strip()
        error = str(values.get("error") or "").strip()
        stated = state.lower() not in _OK_STATES
        failing = bool(error) or stated
        words = [error or state] if failing else []
        for name in sorted(values):
            count = _count(values[name])
            if (stated and not error) or name in ("state", "error") or not count:
                continue  # a state sentence already says how much
            if any(word in name for word in _PROBLEM_WORDS):
                words.append(f"{count} {name.replace('_', ' ')}")
        if words:
            label = OWNER_LABELS.get(owner, owner)
            phrases.append(HealthPhrase(owner, f"{label}: {', '.join(words)}", failing))
    return phrases


class ProblemWatch:
    """Tells each new problem once (for the headless path's one stderr line per fault)."""

    def __init__(self) -> None:
        self._told: dict[str, str] = {}

    def new_problems(self, health: Mapping[str, Any]) -> list[str]:
        """Phrases of owners that turned bad (or changed reason) since the last call."""
        out = []
        current = {
            p.owner: p for p in health_phrases(health) if p.bad and p.owner not in SELF_REPORTING
        }
        for owner, phrase in current.items():
            reason = str(health.get(f"{owner}.error") or health.get(f"{owner}.state") or "")
            if self._told.get(owner) != reason:
                self._told[owner] = reason
                out.append(phrase.text)
        for owner in list(self._told):
            if owner not in current:
                del self._told[owner]  # recovered: a later failure is told again
        return out
