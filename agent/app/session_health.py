"""What a recording says about itself: the store's, the job output's and the collectors'
counters and the last gap in sampling, for the UI header, the live line and ``run_end``."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from agent.app.job import OutputPump
from agent.sampler import Sampler
from agent.store import Store


def recording_health(
    store: Store, pump: OutputPump | None = None, sampler: Sampler | None = None
) -> dict[str, Any]:
    health: dict[str, Any] = {"samples": store.rows_written, "dropped_ticks": store.dropped_ticks}
    if store.state != "ok":  # what the UI header shows: "disk full: 12 ticks buffered, 0 dropped"
        health["store_error"] = store.state
        health.update(store.health())  # its counters only while something is wrong
    if pump is not None:
        health.update(pump.health())
    health.update(collector_health(sampler))
    gap = sampler.stats.last_gap if sampler is not None else None
    if gap is not None:  # the hole in the recording (the agent was stopped, or a tick overran)
        start, seconds, missed = gap
        at = time.strftime("%H:%M:%S", time.localtime(start))
        health["sampling.state"] = f"gap of {seconds:g} s at {at} ({missed} ticks missed)"
    return health


def collector_health(sampler: Sampler | None) -> dict[str, Any]:
    """The collectors' own counters (the training client's drops...); a failing one says none."""
    health: dict[str, Any] = {}
    for collector in sampler.collectors if sampler is not None else ():
        with contextlib.suppress(Exception):
            health.update(collector.health())
    return health
