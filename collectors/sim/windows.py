"""When a scenario's effect is on: one window from ``start_s`` to ``end_s``, or, with
``every_s`` and ``for_s``, the first ``for_s`` seconds of every ``every_s`` inside it."""

from __future__ import annotations


def since_window_opened(
    t: float, start_s: float, end_s: float, every_s: float | None, for_s: float | None
) -> float | None:
    """Seconds since the window that holds ``t`` opened; None when ``t`` is in none."""
    if not start_s <= t < end_s:
        return None
    if every_s and for_s:
        into = (t - start_s) % every_s
        return into if into < for_s else None
    return t - start_s
