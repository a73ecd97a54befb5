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

from collections.abc import Mapping, Sequence
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
from agent.catalog import CATALOG
from agent.catalog.process import SOURCE as PROCESS_SOURCE
from agent.registry import default_registry
from agent.snapshot import Snapshot

_TRAFFIC = ("host_tx", "host_rx", "peer_tx", "peer_rx")
_DISK_WRITE = "host.disk.write_bytes"
#: Per source, its accelerator columns (role → metric), rebuilt only when its declaration changes.
_COLUMNS = SourceColumns()
#: Per source: a fingerprint of its batch's entity column (row count, first and last entity),
#: ticks since the last full look, and its accelerators. A source sends the same entities tick
#: after tick, so the rows are read again only when the fingerprint changes (a device or a
#: process came or went) or every ``_REFRESH_TICKS`` ticks.
_LAST_SEEN: dict[str, tuple[tuple[int, str, str], int, tuple[str, ...]]] = {}
_REFRESH_TICKS = 60


def _accelerators_of(source: str, entities: Sequence[str]) -> tuple[str, ...]:
    if not entities:
        return ()
    key = (len(entities), entities[0], entities[-1])
    last = _LAST_SEEN.get(source)
    if last is not None and last[0] == key and last[1] < _REFRESH_TICKS:
        _LAST_SEEN[source] = (key, last[1] + 1, last[2])
        return last[2]
    registry = default_registry()
    found = tuple(e for e in dict.fromkeys(entities) if registry.kind_of(source, e) == ACCELERATOR)
    _LAST_SEEN[source] = (key, 0, found)
    return found


@dataclass(frozen=True)
class _Device:
    """One accelerator of the tick: its source and, per ``aw_accel`` column, the metric."""

    source: str
    metric: dict[str, str]


def accelerators(snap: Snapshot) -> dict[str, _Device]:
    """The tick's accelerators that report their ``busy`` metric."""
    found: dict[str, _Device] = {}
    for b in snap.batches:
        device = _device_of(b.source)
        if device is None:
            continue
        busy = device.metric["busy"]
        for e in _accelerators_of(b.source, b.entities):
            if snap.values.get((e, busy)) is not None:
                found[e] = device
    return found


#: Per source, its columns as a plain dict (the hot path's look-ups), kept while the source's
#: declaration is the same.
_DEVICES: dict[str, tuple[AcceleratorSource | None, _Device | None]] = {}


def _device_of(source: str) -> _Device | None:
    columns = _COLUMNS.get(source)
    cached = _DEVICES.get(source)
    if cached is None or cached[0] is not columns:
        device = None
        if columns is not None and "busy" in columns.columns:
            device = _Device(source, dict(columns.columns))
        cached = _DEVICES[source] = (columns, device)
    return cached[1]


_DISK_SOURCE = CATALOG[_DISK_WRITE].source


def hang_state(snap: Snapshot) -> str | None:
    """``"idle"`` or ``"spinning"`` when this tick meets the hang rule's device condition
    (every job accelerator idle while the job neither computes on the host nor writes; or every
    job accelerator pinned without traffic and with empty SMs), else None."""
    accels = accelerators(snap)
    if not accels:
        return None
    values, attrs = snap.values, snap.entity_attrs
    holding, recorded = set(), set()
    for e, d in accels.items():
        memory = values.get((e, d.metric.get("job_memory", "")))
        procs = values.get((e, d.metric.get("job_procs", "")))
        if memory is not None or procs is not None:
            recorded.add(d.source)
        if (memory or 0) > 0 or (procs or 0) > 0:
            holding.add(e)
    marked = {e: attrs.get(e, {}).get("used_by_job") for e in accels}
    job, _ = select_job_accelerators(
        {e: d.source for e, d in accels.items()}, marked, holding, recorded
    )
    if not job:
        return None
    busy = [values.get((e, accels[e].metric["busy"])) or 0.0 for e in job]
    if (
        max(busy) <= HANG_IDLE_UTIL
        and _job_cpu(snap) < HANG_CPU_IDLE
        and _disk_write(snap) < WRITE_BURST_BYTES
    ):
        return "idle"
    if min(busy) >= HANG_SPIN_UTIL and _spinning(values, {e: accels[e] for e in job}):
        return "spinning"
    return None


def _spinning(values: Mapping[tuple[str, str], float], job: dict[str, _Device]) -> bool:
    def value(e: str, d: _Device, column: str) -> float | None:
        return values.get((e, d.metric.get(column, "")))

    seen = [value(e, d, c) for e, d in job.items() for c in _TRAFFIC]
    if all(v is None for v in seen):  # the rule needs traffic counters to call it spinning
        return False
    if sum(v or 0.0 for v in seen) >= HANG_TRAFFIC_BYTES:
        return False
    sm = [v for e, d in job.items() if (v := value(e, d, "sm")) is not None]
    if sm:
        return max(sm) < HANG_SPIN_SM
    power = [
        (value(e, d, "power") or 0.0) / (value(e, d, "power_limit") or float("inf"))
        for e, d in job.items()
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
