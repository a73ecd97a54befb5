"""Cheap per-tick checks that decide when the live analysis must run a full pass now.

The CPU governor (:mod:`agent.analysis.budget`) may space full rule passes minutes apart; a
hang must still be flagged within a minute. :class:`HangWatch` reads the latest snapshot (a
few dictionary look-ups per accelerator and per job process, no SQL; accelerators found by
their entity kind, their metrics by role, both cached) and tracks how long the hang
rule's device condition has held. It only *triggers* a full pass: the finding, its evidence
and its episode still come from the SQL rule in ``rules/hang.py``, with the same thresholds.
The rule's step-time view is not watched: step logs are imported, not sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.analysis.frame import PROCESS_CPU
from agent.analysis.frame_accel import (
    ACCELERATOR,
    AcceleratorSource,
    SourceColumns,
    select_job_accelerators,
)
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
from agent.catalog.host import SOURCE as HOST_SOURCE
from agent.catalog.process import SOURCE as PROCESS_SOURCE
from agent.registry import default_registry
from agent.snapshot import Snapshot

_TRAFFIC = ("host_tx", "host_rx", "peer_tx", "peer_rx")
_DISK_WRITE = "host.disk.write_bytes"
#: Per source, its accelerator columns (role → metric), rebuilt only when its declaration changes.
_COLUMNS = SourceColumns()
#: Per source, the entity column of its last batch and the accelerators in it: a source sends
#: the same entities tick after tick, so comparing the lists replaces a look-up per row.
_LAST_SEEN: dict[str, tuple[Sequence[str], tuple[str, ...]]] = {}


def _accelerators_of(source: str, entities: Sequence[str]) -> tuple[str, ...]:
    last = _LAST_SEEN.get(source)
    if last is not None and last[0] == entities:
        return last[1]
    registry = default_registry()
    found = tuple(e for e in dict.fromkeys(entities) if registry.kind_of(source, e) == ACCELERATOR)
    _LAST_SEEN[source] = (entities, found)
    return found


def accelerators(snap: Snapshot) -> dict[str, AcceleratorSource]:
    """The tick's accelerators that report their ``busy`` metric → their source's columns."""
    found: dict[str, AcceleratorSource] = {}
    for b in snap.batches:
        columns = _COLUMNS.get(b.source)
        if columns is None or "busy" not in columns.columns:
            continue
        busy = columns.columns["busy"]
        for e in _accelerators_of(b.source, b.entities):
            if snap.value(e, busy) is not None:
                found[e] = columns
    return found


def _value(snap: Snapshot, entity: str, source: AcceleratorSource, column: str) -> float | None:
    metric = source.columns.get(column)
    return None if metric is None else snap.value(entity, metric)


def hang_state(snap: Snapshot) -> str | None:
    """``"idle"`` or ``"spinning"`` when this tick meets the hang rule's device condition
    (every job accelerator idle while the job neither computes on the host nor writes; or every
    job accelerator pinned without traffic and with empty SMs), else None."""
    accels = accelerators(snap)
    if not accels:
        return None
    attrs = snap.entity_attrs
    holding = {
        e
        for e, s in accels.items()
        if (_value(snap, e, s, "job_memory") or 0) > 0 or (_value(snap, e, s, "job_procs") or 0) > 0
    }
    marked = {e: attrs.get(e, {}).get("used_by_job") for e in accels}
    recorded = {s.name for e, s in accels.items() if _value(snap, e, s, "job_memory") is not None}
    job, _ = select_job_accelerators(
        {e: s.name for e, s in accels.items()}, marked, holding, recorded
    )
    if not job:
        return None
    busy = [_value(snap, e, accels[e], "busy") or 0.0 for e in job]
    if (
        max(busy) <= HANG_IDLE_UTIL
        and _job_cpu(snap) < HANG_CPU_IDLE
        and _disk_write(snap) < WRITE_BURST_BYTES
    ):
        return "idle"
    if min(busy) >= HANG_SPIN_UTIL and _spinning(snap, {e: accels[e] for e in job}):
        return "spinning"
    return None


def _spinning(snap: Snapshot, job: dict[str, AcceleratorSource]) -> bool:
    seen = [_value(snap, e, s, c) for e, s in job.items() for c in _TRAFFIC]
    if all(v is None for v in seen):  # the rule needs traffic counters to call it spinning
        return False
    if sum(v or 0.0 for v in seen) >= HANG_TRAFFIC_BYTES:
        return False
    sm = [v for e, s in job.items() if (v := _value(snap, e, s, "sm")) is not None]
    if sm:
        return max(sm) < HANG_SPIN_SM
    power = [
        (_value(snap, e, s, "power") or 0.0) / (_value(snap, e, s, "power_limit") or float("inf"))
        for e, s in job.items()
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
        if b.source == HOST_SOURCE:
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
