"""Rule 11's live watches: one tick's step times (and device signals) against the peers'.

Cheap per-tick checks (:mod:`agent.analysis.watch`) that tell the live analysis when the
``straggler`` and ``rank-spread`` SQL may find; never a second definition of the finding.
"""

from __future__ import annotations

import statistics

from agent.analysis.frame import STEP_TIME
from agent.analysis.thresholds import (
    LOW_BUSY,
    SPREAD_BAND,
    STRAGGLER_INDIVIDUAL_SCORE,
    STRAGGLER_MIN_RANKS,
    STRAGGLER_SCORE,
)
from agent.analysis.watch import Tick
from agent.catalog.steps import SOURCE as STEPS_SOURCE
from agent.snapshot import Snapshot


def _rank_means(snap: Snapshot) -> list[float]:
    """Each reporting rank's mean step time in this tick (its step batches only)."""
    times: dict[str, list[float]] = {}
    for batch in snap.batches:
        if batch.source != STEPS_SOURCE:
            continue
        for entity, metric, value in zip(batch.entities, batch.metrics, batch.values):
            if metric == STEP_TIME and value is not None and value > 0:
                times.setdefault(entity, []).append(float(value))
    return [sum(v) / len(v) for v in times.values()]


def steps_lagging(snap: Snapshot) -> bool:
    """The step view's per-tick watch, for a live scheduler that runs a rule's SQL only while
    its watch holds: in this tick, the slowest reporting rank's mean step time is more than
    1 / STRAGGLER_INDIVIDUAL_SCORE times the median of the other ranks' (>= 3 ranks), the
    relative-score half of the emerging flag. No SQL: a pass over the tick's step batches."""
    means = sorted(_rank_means(snap))
    if len(means) < STRAGGLER_MIN_RANKS:
        return False
    return means[-1] > statistics.median(means[:-1]) / STRAGGLER_INDIVIDUAL_SCORE


def watch_spread(tick: Tick) -> bool:
    """A rank whose step time in this tick is ``SPREAD_BAND`` or more off the median of its
    peers' (>= 3 ranks), slower or faster: what a persistent spread looks like in one tick.
    The rule judges the ranks' medians over the window; a spread that persists shows in most
    ticks, so the watch holds through it (and the full pass catches one that only the
    medians show)."""
    means = sorted(_rank_means(tick.snap))
    if len(means) < STRAGGLER_MIN_RANKS:
        return False
    # the slowest rank is the furthest above its peers' median, the fastest the furthest below
    slow_peers, fast_peers = statistics.median(means[:-1]), statistics.median(means[1:])
    return means[-1] >= (1 + SPREAD_BAND) * slow_peers or means[0] <= (1 - SPREAD_BAND) * fast_peers


def watch_straggler(tick: Tick) -> bool:
    """A rank lagging in this tick's step times, or (device view) one of three or more busy
    peers lagging their median busy share or SM clock."""
    if steps_lagging(tick.snap):
        return True
    busy = tick.accel("busy")
    if len(busy) < 3:
        return False
    peer = statistics.median(busy.values())
    clock, idle = tick.accel("clock"), tick.accel("thr_idle")
    working = {e: v for e, v in clock.items() if idle.get(e, 0.0) < 0.5}
    peer_clock = statistics.median(clock.values()) if clock else 0.0
    return peer >= LOW_BUSY and (
        any(v < STRAGGLER_SCORE * peer for v in busy.values())
        or any(v < STRAGGLER_SCORE * peer_clock for v in working.values())
    )


def steps_reported(tick: Tick) -> bool:
    """A rank reports step times or counts in this tick: the rank views read nothing else, so
    without one in a window the ``rank-spread`` SQL has no rank to judge (its watch is looser
    than a necessary condition: a spread only the window's medians show)."""
    return any(b.source == STEPS_SOURCE and len(b) for b in tick.snap.batches)


def never_live(tick: Tick) -> bool:
    """``rank-speed-change`` reports nothing on a live window (a rank's own history is too
    short there), so the live full pass never needs to run it."""
    return False
