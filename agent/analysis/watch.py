"""Cheap per-tick checks (watches) that tell the live analysis when a rule's SQL must run.

A full SQL pass costs 0.1-0.3 s of CPU (DuckDB plans every statement anew), so the live
analysis cannot run the rules every few seconds within 0.3% of a core. Instead each rule
declares a *watch* (``Rule.watch``): a function of one :class:`Tick` (the latest snapshot, read
with a few dictionary look-ups per accelerator and process, no SQL) that says whether the
rule's condition may hold now. The scheduler (:mod:`agent.analysis.live`) times how long each
watch has held and runs that rule's SQL once it has held for the rule's minimum duration. A
watch is a necessary condition of the SQL flag, never a second definition of the finding: the
finding, its evidence and its episode still come from the SQL rule, with the same thresholds.

Accelerators are found by their entity kind and their metrics by role (both cached); counters
are read as per-second rates from the previous tick, as the frames' buckets read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from agent.analysis.frame import PROCESS_CPU, PROCESS_WRITE
from agent.analysis.frame_accel import (
    ACCELERATOR,
    AcceleratorSource,
    SourceColumns,
    select_job_accelerators,
)
from agent.analysis.thresholds import (
    HANG_CPU_IDLE,
    HANG_IDLE_UTIL,
    HANG_SPIN_SM,
    HANG_SPIN_UTIL,
    HANG_TRAFFIC_BYTES,
    SM_ACTIVITY_LOW,
    WRITE_BURST_BYTES,
)
from agent.analysis.watch_arrays import ColumnTable, TickArrays
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


def job_devices(snap: Snapshot, accels: dict[str, _Device] | None = None) -> dict[str, _Device]:
    """The tick's accelerators the job uses (the frames' rule, applied to one snapshot);
    ``accels``: the tick's accelerators, if already found."""
    accels = accelerators(snap) if accels is None else accels
    if not accels:
        return {}
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
    return {e: accels[e] for e in job}


def hang_state(snap: Snapshot, job: dict[str, _Device] | None = None) -> str | None:
    """``"idle"`` or ``"spinning"`` when this tick meets the hang rule's device condition
    (every job accelerator idle while the job neither computes on the host nor writes; or every
    job accelerator pinned without traffic and with empty SMs), else None. ``job``: the job's
    accelerators, if already found."""
    job = job_devices(snap) if job is None else job
    if not job:
        return None
    values = snap.values
    busy = [values.get((e, d.metric["busy"])) or 0.0 for e, d in job.items()]
    if (
        max(busy) <= HANG_IDLE_UTIL
        and _job_cpu(snap) < HANG_CPU_IDLE
        and _disk_write(snap) < WRITE_BURST_BYTES
    ):
        return "idle"
    if min(busy) >= HANG_SPIN_UTIL and _spinning(values, job):
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


_COUNTERS: dict[str, bool] = {}
#: Role → the metrics that play it (catalog lookups, once).
_ROLE_METRICS: dict[str, frozenset[str]] = {}


def _is_counter(metric: str) -> bool:
    known = _COUNTERS.get(metric)
    if known is None:
        declared = CATALOG.get(metric)
        known = _COUNTERS[metric] = declared is not None and declared.is_counter
    return known


@dataclass
class Tick:
    """One snapshot as the watches read it; every view is computed once, on first use.

    ``seen`` are the accelerators the scheduler saw at earlier ticks (for "stopped reporting").
    """

    snap: Snapshot
    seen: frozenset[str] = field(default_factory=frozenset)
    #: The arrays of the tick observed before (:mod:`agent.analysis.watch_arrays`), reused
    #: while the sources' columns stay the same.
    previous: TickArrays | None = None

    @property
    def ts(self) -> float:
        return self.snap.ts

    def __post_init__(self) -> None:
        self._accel: dict[tuple[str, bool], dict[str, float]] = {}
        self._table: tuple[ColumnTable, list[list[float]], list[list[bool]], bool] | None = None
        self._played: dict[str, list[float]] = {}

    def _value(self, entity: str, metric: str) -> float | None:
        if _is_counter(metric):
            return self.snap.rate(entity, metric)
        return self.snap.values.get((entity, metric))

    @cached_property
    def arrays(self) -> TickArrays | None:
        """The tick's values as arrays (None: not the hub's indexed values)."""
        return TickArrays.of(self.snap, self.previous)

    @cached_property
    def devices(self) -> dict[str, _Device]:
        """Every accelerator of the tick that reports its ``busy`` metric: the same while the
        hub keeps its index (every value it indexes is reported), found again every
        ``_REFRESH_TICKS`` ticks as the entity kinds are."""
        arrays = self.arrays
        if arrays is None:
            return accelerators(self.snap)
        positions = arrays.positions
        known = positions.devices
        if known is None or positions.ticks % _REFRESH_TICKS == 0:
            known = positions.devices = accelerators(self.snap)
        positions.ticks += 1
        return dict(known)

    @cached_property
    def job(self) -> dict[str, _Device]:
        """The job's accelerators (the frames' ``job_accelerators``)."""
        return job_devices(self.snap, self.devices)

    def accel(self, column: str, among: Iterable[str] | None = None) -> dict[str, float]:
        """``aw_accel.column`` of the job's accelerators (or of every accelerator, when
        ``among`` is ``devices``) that report it; computed once per tick and column."""
        every = among is not None
        cached = self._accel.get((column, every))
        if cached is not None:
            return cached
        devices = self.devices
        chosen = devices if every else self.job
        found = self._accel_table(column)
        if found is not None:
            if not every:
                found = {e: found[e] for e in chosen if e in found}
            self._accel[(column, every)] = found
            return found
        out: dict[str, float] = {}
        values, rate = self.snap.values, self.snap.rate
        for e in chosen:
            d = devices.get(e)
            metric = None if d is None else d.metric.get(column)
            if metric is None:
                continue
            v = rate(e, metric) if _is_counter(metric) else values.get((e, metric))
            if v is not None:
                out[e] = v
        self._accel[(column, every)] = out
        return out

    def _accel_table(self, column: str) -> dict[str, float] | None:
        """``column`` of every accelerator, read through the table of all their columns
        (one fancy index a tick; None: not this way, e.g. a counter column without a previous
        tick of this index)."""
        arrays = self.arrays
        if arrays is None:
            return None
        read = self._table
        if read is None:
            devices = self.devices
            chosen = tuple(devices)
            tables = arrays.positions.tables
            table = tables.get(chosen)
            if table is None:
                table = tables[chosen] = ColumnTable(
                    arrays.positions.index, chosen, lambda e: devices[e].metric, _is_counter
                )
            read = self._table = (table, *table.read(arrays))
        table, values, known, rated = read
        i = table.row_of.get(column)
        if i is None:
            return {}
        if not rated and table.counts(column):
            return None
        return {e: v for e, v, k in zip(table.entities, values[i], known[i]) if k}

    def has_column(self, column: str) -> bool:
        """Whether the job's accelerators' sources declare ``column``."""
        return any(column in d.metric for d in self.job.values())

    def host(self, metric: str) -> float | None:
        """A host-wide metric (entity ``host``), counters as rates."""
        return self._value("host", metric)

    def host_spread(self, prefix: str, metric: str) -> list[float]:
        """``metric`` of every host entity named ``prefix...`` (cores, disks, ports)."""
        out = []
        for b in self.snap.batches:
            for e, m in zip(b.entities, b.metrics):
                if m == metric and e.startswith(prefix) and (v := self._value(e, m)) is not None:
                    out.append(v)
        return out

    @cached_property
    def processes(self) -> dict[str, dict[str, float]]:
        """The job's processes: pid entity → {role, cpu, write} (role from entity attributes)."""
        arrays = self.arrays
        found = None if arrays is None else _processes_of(arrays, self.snap)
        if found is not None:
            return found
        out: dict[str, dict[str, float]] = {}
        for b in self.snap.batches:
            if b.source != PROCESS_SOURCE:
                continue
            for e, m, v in zip(b.entities, b.metrics, b.values):
                if m == PROCESS_CPU:
                    out.setdefault(e, {})["cpu"] = v
                elif m == PROCESS_WRITE:
                    out.setdefault(e, {})["write"] = self.snap.rate(e, m) or 0.0
        return out

    def role(self, entity: str) -> str | None:
        role = self.snap.entity_attrs.get(entity, {}).get("role")
        return None if role is None else str(role)

    def process_cpu(self, role: str | None = None) -> list[float]:
        """CPU (cores) of the job's processes, of one role (``main``, ``worker``) or all."""
        if role is None:
            return [p.get("cpu", 0.0) for p in self.processes.values()]
        return list(self._cpu_by_role.get(role, ()))

    @cached_property
    def _cpu_by_role(self) -> dict[str | None, list[float]]:
        """The processes' CPU grouped by role, once a tick (several watches ask)."""
        out: dict[str | None, list[float]] = {}
        for e, p in self.processes.items():
            out.setdefault(self.role(e), []).append(p.get("cpu", 0.0))
        return out

    def played(self, role: str) -> list[float]:
        """Values of every metric that plays ``role``, on any entity (a runtime's latencies
        are on its own entity, not a device's)."""
        names = _ROLE_METRICS.get(role)
        if names is None:
            names = _ROLE_METRICS[role] = frozenset(m.name for m in CATALOG.by_role(role))
        if not names:
            return []
        found = self._played.get(role)
        if found is None:
            found = self._played[role] = [
                v for b in self.snap.batches for m, v in zip(b.metrics, b.values) if m in names
            ]
        return found

    @cached_property
    def events(self) -> frozenset[str]:
        """Kinds of the events of this tick."""
        return frozenset(e.kind for e in self.snap.events)

    @cached_property
    def missing(self) -> frozenset[str]:
        """Accelerators seen at an earlier tick that report nothing now."""
        return self.seen - set(self.devices)


def _process_entities(snap: Snapshot) -> list[str]:
    return [e for b in snap.batches if b.source == PROCESS_SOURCE for e in b.entities]


def _processes_of(arrays: TickArrays, snap: Snapshot) -> dict[str, dict[str, float]] | None:
    """``Tick.processes`` read through the arrays (None: write counters without a previous
    tick of this index). One index means one shape of the process batches, so their
    positions are worked out once."""
    positions = arrays.positions
    cpu_of, cpu_at = positions.rows("process", PROCESS_CPU, lambda: _process_entities(snap))
    write_of, write_at = positions.rows("process", PROCESS_WRITE, lambda: _process_entities(snap))
    out: dict[str, dict[str, float]] = {
        e: {"cpu": v} for e, v in zip(cpu_of, arrays.now[cpu_at].tolist())
    }
    if write_of:
        rated = arrays.rates(write_at)
        if rated is None:
            return None
        rates, known = rated
        for e, v, k in zip(write_of, rates.tolist(), known.tolist()):
            out.setdefault(e, {})["write"] = (v or 0.0) if k else 0.0
    return out


def mean(values: Iterable[float]) -> float | None:
    found = list(values)
    return sum(found) / len(found) if found else None
