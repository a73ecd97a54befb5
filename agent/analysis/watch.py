"""Cheap per-tick checks that decide when the live analysis must run a full pass now.

The CPU governor (:mod:`agent.analysis.budget`) may space full rule passes minutes apart; a
hang must still be flagged within a minute. :class:`HangWatch` reads the latest snapshot (a
few dictionary look-ups per GPU and per job process, no SQL) and tracks how long the hang
rule's device condition has held. It only *triggers* a full pass: the finding, its evidence
and its episode still come from the SQL rule in ``rules/hang.py``, with the same thresholds.
The rule's step-time view is not watched: step logs are imported, not sampled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.analysis.frame import GPU_COLUMNS, PROCESS_CPU, select_job_gpus
from agent.analysis.thresholds import (
    HANG_CPU_IDLE,
    HANG_IDLE_UTIL,
    HANG_MIN_S,
    HANG_RETRY_S,
    HANG_SPIN_SM,
    HANG_SPIN_UTIL,
    HANG_TRAFFIC_BYTES,
    SM_ACTIVITY_LOW,
    WRITE_BURST_BYTES,
)
from agent.catalog import CATALOG
from agent.catalog.process import SOURCE as PROCESS_SOURCE
from agent.snapshot import Snapshot

_TOP_LEVEL_GPU = re.compile(r"gpu[0-9]+")
_TRAFFIC = tuple(GPU_COLUMNS[c] for c in ("pcie_tx", "pcie_rx", "nvlink_tx", "nvlink_rx"))
_DISK_WRITE = "host.disk.write_bytes"
_DISK_SOURCE = CATALOG[_DISK_WRITE].source


def hang_state(snap: Snapshot) -> str | None:
    """``"idle"`` or ``"spinning"`` when this tick meets the hang rule's device condition
    (every job GPU idle while the job neither computes on the host nor writes; or every job
    GPU pinned without traffic and with empty SMs), else None."""
    attrs = snap.entity_attrs
    gpus = [
        e
        for e in attrs
        if _TOP_LEVEL_GPU.fullmatch(e) and snap.value(e, GPU_COLUMNS["util"]) is not None
    ]
    if not gpus:
        return None
    holding = {
        g
        for g in gpus
        if (snap.value(g, GPU_COLUMNS["job_memory"]) or 0) > 0
        or (snap.value(g, GPU_COLUMNS["job_procs"]) or 0) > 0
    }
    marked = {g: attrs[g].get("used_by_job") for g in gpus}
    recorded = any(snap.value(g, GPU_COLUMNS["job_memory"]) is not None for g in gpus)
    job, _ = select_job_gpus(gpus, marked, holding, recorded)
    if not job:
        return None
    utils = [snap.value(g, GPU_COLUMNS["util"]) or 0.0 for g in job]
    if (
        max(utils) <= HANG_IDLE_UTIL
        and _job_cpu(snap) < HANG_CPU_IDLE
        and _disk_write(snap) < WRITE_BURST_BYTES
    ):
        return "idle"
    if min(utils) >= HANG_SPIN_UTIL and _spinning(snap, job):
        return "spinning"
    return None


def _spinning(snap: Snapshot, job: list[str] | tuple[str, ...]) -> bool:
    seen = [snap.value(g, m) for g in job for m in _TRAFFIC]
    if all(v is None for v in seen):  # the rule needs traffic counters to call it spinning
        return False
    if sum(v or 0.0 for v in seen) >= HANG_TRAFFIC_BYTES:
        return False
    sm = [v for g in job if (v := snap.value(g, GPU_COLUMNS["sm"])) is not None]
    if sm:
        return max(sm) < HANG_SPIN_SM
    power = [
        (snap.value(g, GPU_COLUMNS["power"]) or 0.0)
        / (snap.value(g, GPU_COLUMNS["power_limit"]) or float("inf"))
        for g in job
    ]
    return max(power) < SM_ACTIVITY_LOW


def _job_cpu(snap: Snapshot) -> float:
    return sum(
        v
        for b in snap.batches
        if b.source == PROCESS_SOURCE
        for m, v in zip(b.metrics, b.values)
        if m == PROCESS_CPU
    )


def _disk_write(snap: Snapshot) -> float:
    total = 0.0
    for b in snap.batches:
        if b.source == _DISK_SOURCE:
            for e, m in zip(b.entities, b.metrics):
                if m == _DISK_WRITE and e.startswith("disk:"):
                    total += snap.rate(e, m) or 0.0
    return total


@dataclass
class HangWatch:
    """How long the hang condition has held, and whether a full pass should confirm it now.

    ``due(now)`` is true once the condition has held for the rule's minimum duration and no
    pass has confirmed the hang yet; it repeats every ``retry_s`` while unconfirmed (ticks
    reach the store asynchronously, so a pass may still miss the last seconds).
    """

    min_s: float = HANG_MIN_S
    retry_s: float = HANG_RETRY_S
    since: float | None = None
    state: str | None = None
    confirmed: bool = False
    last_trigger: float | None = None

    def observe(self, snap: Snapshot) -> None:
        state = hang_state(snap)
        if state is None or state != self.state:
            self.since = snap.ts if state is not None else None
            self.confirmed, self.last_trigger = False, None
        self.state = state

    def due(self, now: float) -> bool:
        if self.since is None or self.confirmed or now - self.since < self.min_s:
            return False
        return self.last_trigger is None or now - self.last_trigger >= self.retry_s

    def triggered(self, now: float, confirmed: bool) -> None:
        """Record an urgent pass at ``now`` and whether it reported the hang."""
        self.last_trigger, self.confirmed = now, confirmed
