"""The report's summary: duration, devices and their utilization percentiles, energy from the
cumulative counter (reset-safe), and the time lost by cause with each second counted once.

Kept apart from :mod:`agent.report` (which builds and renders the report) because the summary
is also read on a second cursor beside the analysis (:class:`_Beside`).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import duckdb
import numpy as np

from agent.analysis.engine import finding_windows
from agent.analysis.finding import Finding
from agent.analysis.frame_accel import AcceleratorPlan, accelerator_plan
from agent.analysis.frame_sql import in_list
from agent.analysis.rules.utilization import IDLE_RESERVED, STARVATION
from agent.model import RunInfo
from agent.report_fabric_storage import summarize_fabric_storage
from agent.runs import (
    LocalReadConnection,
    ReadConnection,
    json_object,
)
from agent.series import has_series
from agent.store_spans import has_spans

JOULES_PER_KWH = 3.6e6


@dataclass
class DeviceSummary:
    entity: str
    name: str
    util_mean: float | None
    util_p50: float | None
    util_p90: float | None
    util_p99: float | None
    energy_kwh: float | None


@dataclass
class RunSummary:
    run_id: str
    name: str
    status: str
    host: str
    started: str
    ended: str | None
    duration_s: float
    scenario: str | None
    devices: list[DeviceSummary] = field(default_factory=list)
    energy_kwh: float | None = None
    util_p50: float | None = None
    util_p90: float | None = None
    lost_share: dict[str, float] = field(default_factory=dict)
    #: Holes in the recording (``gap`` events): start (ISO, UTC), seconds, missed ticks.
    gaps: list[dict[str, Any]] = field(default_factory=list)
    #: What the devices are called ("GPU", "TPU"; "accelerator" when mixed or unknown).
    device_noun: str = "accelerator"
    #: Fabric ports and the job's mounts (agent/report_fabric_storage.py).
    fabric_storage: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def summarize(
    con: ReadConnection,
    run: RunInfo,
    findings: list[Finding],
    duration_s: float,
    device_rows: DeviceRows | None = None,
) -> RunSummary:
    """The run's headline numbers, from plain queries (so they also work over the socket).

    ``device_rows``: what :func:`busy_and_energy` already read (possibly on another thread,
    while the analysis ran); read now when not given."""
    plan = accelerator_plan()  # accelerators by entity kind, their utilization by role
    busy, energy_rows = device_rows or busy_and_energy(con, run.run_id, plan)
    names = {
        entity: name
        for entity, name in con.execute(
            "SELECT entity, json_extract_string(attrs, '$.name') FROM entities "
            f"WHERE run_id = ? AND ({plan.predicate})",
            [run.run_id],
        ).fetchall()
    }
    overall_row = next((r for r in busy if r[0] is None), None)
    rows = sorted(
        ((e, names.get(e), mean, q) for e, mean, q in busy if e is not None),
        key=lambda r: (len(r[0]), r[0]),
    )
    energy = {entity: float(joules or 0.0) for entity, joules in energy_rows}
    devices = []
    for entity, name, mean, q in rows:
        # quantile_cont over a list gives one value per fraction; NULL when no sample has one.
        p50, p90, p99 = q or (None, None, None)
        devices.append(
            DeviceSummary(
                entity=entity,
                name=name or entity,
                util_mean=mean,
                util_p50=p50,
                util_p90=p90,
                util_p99=p99,
                energy_kwh=energy.get(entity, 0.0) / JOULES_PER_KWH if energy else None,
            )
        )
    overall = (overall_row[2] if overall_row else None) or [None, None, None]
    lost = lost_by_cause(findings)
    gaps = [
        {
            "start": _iso(float(d.get("start", 0.0))),
            "seconds": float(d.get("seconds", 0.0)),
            "missed_ticks": int(d.get("missed_ticks", 0)),
        }
        for (raw,) in con.execute(
            "SELECT detail FROM events WHERE run_id = ? AND kind = 'gap' ORDER BY ts",
            [run.run_id],
        ).fetchall()
        for d in [json_object(raw)]
    ]
    return RunSummary(
        run.run_id,
        run.name,
        run.status,
        run.host,
        _iso(run.started),
        _iso(run.ended) if run.ended else None,
        duration_s,
        run.scenario,
        devices,
        # added in the devices' order: the rows come in DuckDB's order, which may vary
        sum(energy[e] for e in sorted(energy, key=lambda e: (len(e), e))) / JOULES_PER_KWH
        if energy
        else None,
        overall[0],
        overall[1],
        {rule: s / duration_s for rule, s in lost.items() if duration_s > 0},
        gaps,
        device_noun(plan, [d.entity for d in devices]),
        fabric_storage=summarize_fabric_storage(con, run.run_id),
    )


#: Per accelerator (entity None: all of them) ``(entity, mean, [p50, p90, p99])`` of its
#: utilization, and per accelerator ``(entity, joules)``: what :func:`busy_and_energy` reads.
DeviceRows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


def busy_and_energy(con: ReadConnection, run_id: str, plan: AcceleratorPlan) -> DeviceRows:
    """In one scan of the run's samples: per accelerator (and over all of them, entity None)
    the mean and p50/p90/p99 of its utilization (by role), and per accelerator the reset-safe
    increase of its energy counter (by role) over the run.

    Percentiles of raw samples cannot come from the analysis' buckets, so this reads the raw
    values of those few series. In a schema-3 file their ids are picked in the small ``series``
    table first and the scan filters on the integer ids alone (no label is joined to a value
    before the few rows are aggregated), in spans (schema 4) one series at a time, reading
    only its row groups; an older file is read through its ``samples`` view."""
    busy = f"metric IN ({in_list(plan.role_metrics('busy'))}) AND ({plan.predicate})"
    energy = f"metric IN ({in_list(plan.role_metrics('energy'))}) AND ({plan.predicate})"
    if has_series(con):
        picked = con.execute(
            f"SELECT series_id, entity, metric, ({busy}) AS is_busy FROM series "
            f"WHERE run_id = ? AND (({busy}) OR ({energy}))",
            [run_id],
        ).fetchall()
        if not picked:
            return [], []
        # Rows carry small integers (an entity's code, the series id as its metric), never
        # label strings: the window and the grouping work on those, names are put back last.
        entities = sorted({e for _, e, _, _ in picked})
        code = {e: i for i, e in enumerate(entities)}
        labels = ", ".join(
            f"({int(i)}, {code[e]}, {str(bool(b)).lower()})" for i, e, _, b in picked
        )
        ids = sorted(int(r[0]) for r in picked)
        if has_spans(con) and con.duckdb is not None:
            busy_ids = [(int(i), e) for i, e, _, b in picked if b]
            energy_ids = sorted(int(i) for i, _, _, b in picked if not b)
            util = busy_stats(con.duckdb, busy_ids)
            if _spans_only(con, energy_ids):
                return util, _energy_from_spans(
                    con, [(int(i), e) for i, e, _, b in picked if not b]
                )
            ids, util_rows = energy_ids, util
        else:
            util_rows = None
        if has_spans(con):
            # Spans are sorted by series: an equality on the id skips every row group and
            # segment of the others by min/max (an IN list is tested row by row: 16 series
            # of a 24 h file cost as much as scanning all 1,200).
            values = " UNION ALL ".join(
                f"SELECT series_id, ts, value FROM sample_values WHERE series_id = {i}" for i in ids
            )
        else:
            values = f"""SELECT series_id, ts, value FROM sample_values
                  WHERE series_id >= {ids[0]}
                    AND series_id IN (SELECT unnest([{", ".join(map(str, ids))}]))"""
        rows = f"""SELECT l.entity, v.series_id AS metric, v.ts, v.value, l.is_busy
            FROM ({values}) v
            JOIN (VALUES {labels}) l(series_id, entity, is_busy) USING (series_id)"""
        params: list[Any] = []
        names: list[str] | None = entities
    else:
        rows = f"""SELECT entity, metric, ts, value, ({busy}) AS is_busy FROM samples
            WHERE run_id = ? AND (({busy}) OR ({energy}))"""
        params = [run_id]
        names = None
    # A drop of a counter is a reset, after which it counted up from zero (so the new value is
    # the increase).
    got = con.execute(
        f"""WITH picked AS MATERIALIZED ({rows}),
        util AS (SELECT entity, avg(value) AS mean,
                        quantile_cont(value, [0.5, 0.9, 0.99]) AS q
                 FROM picked WHERE is_busy GROUP BY GROUPING SETS ((entity), ())),
        steps AS (SELECT entity, value,
                         value - lag(value) OVER (PARTITION BY entity, metric ORDER BY ts) AS d
                  FROM picked WHERE NOT is_busy),
        joules AS (SELECT entity, sum(CASE WHEN d >= 0 THEN d ELSE value END) AS joules
                   FROM steps WHERE d IS NOT NULL GROUP BY entity)
        SELECT 'busy' AS part, entity, mean, q FROM util
        UNION ALL SELECT 'energy', entity, joules, NULL FROM joules""",
        params,
    ).fetchall()
    if names is not None:
        got = [(part, None if e is None else names[e], *rest) for part, e, *rest in got]
        if util_rows is not None:  # the utilization came from busy_stats: energy rows alone
            return util_rows, [(e, joules) for part, e, joules, _ in got if part == "energy"]
    return (
        [(e, mean, quantiles) for part, e, mean, quantiles in got if part == "busy"],
        [(e, joules) for part, e, joules, _ in got if part == "energy"],
    )


def _energy_from_spans(con: ReadConnection, energy: list[tuple[int, str]]) -> list[tuple[Any, ...]]:
    """``(entity, joules)``: the reset-safe increase of the energy counters, read in tick order
    (the move numbers ticks in time order, agent/store_spans.py) without joining each value to
    its tick's time. An entity's series' sums are added exactly, in series order."""
    if not energy:
        return []
    parts = " UNION ALL ".join(
        f"SELECT series_id, tick, value FROM sample_spans WHERE series_id = {i}"
        for i, _ in sorted(energy)
    )
    # A drop of a counter is a reset, after which it counted up from zero (so the new value is
    # the increase).
    sums = dict(
        con.execute(
            f"""SELECT series_id, sum(CASE WHEN d >= 0 THEN d ELSE value END)
            FROM (SELECT series_id, value,
                         value - lag(value) OVER (PARTITION BY series_id ORDER BY tick) AS d
                  FROM ({parts}))
            WHERE d IS NOT NULL GROUP BY series_id"""
        ).fetchall()
    )
    per_entity: dict[str, list[float]] = {}
    for i, e in sorted(energy):
        if sums.get(i) is not None:
            per_entity.setdefault(e, []).append(float(sums[i]))
    return [(e, math.fsum(got)) for e, got in per_entity.items()]


def _spans_only(con: ReadConnection, ids: list[int]) -> bool:
    """Whether every row of these series is in the spans (none in the writer's tables)."""
    if not ids:
        return True
    listed = ", ".join(map(str, ids))
    return not con.execute(
        f"SELECT EXISTS (SELECT 1 FROM sample_moving WHERE series_id IN ({listed})) "
        f"OR EXISTS (SELECT 1 FROM sample_recent WHERE series_id IN ({listed}))"
    ).scalar()


#: The percentiles the summary shows, as ``quantile_cont`` fractions.
QUANTILES = (0.5, 0.9, 0.99)


def busy_stats(
    con: duckdb.DuckDBPyConnection, busy: list[tuple[int, str]]
) -> list[tuple[Any, ...]]:
    """``(entity, mean, [p50, p90, p99])`` per accelerator and over all (entity None) of the
    values of the ``(series_id, entity)`` utilization series (spans, schema 4-5).

    The values need no time, so the spans are read without their ticks' times, into NumPy.
    Nothing depends on the order the rows come in: a mean is the exactly rounded sum
    (:func:`math.fsum`) over the count; the percentiles are DuckDB's ``quantile_cont`` over
    the same values (order statistics, so the same to the bit as before). A mean may differ
    from DuckDB's ``avg`` (which adds in the order its threads deliver) in its last digits."""
    ids = sorted({i for i, _ in busy})
    if not ids:
        return [(None, None, None)]
    listed = ", ".join(map(str, ids))
    parts = [f"SELECT series_id, value FROM sample_spans WHERE series_id = {i}" for i in ids]
    # the writer's tables hold only a run's unmoved tail (empty in a closed file)
    parts += [
        f"SELECT series_id, value FROM {t} WHERE series_id IN ({listed})"
        for t in ("sample_moving", "sample_recent")
    ]
    got = con.execute(
        f"SELECT series_id, value FROM ({' UNION ALL '.join(parts)}) WHERE value IS NOT NULL"
    ).fetchnumpy()
    entities = sorted({e for _, e in busy})
    lookup = np.full(ids[-1] + 1, -1, dtype=np.int32)
    for i, e in busy:
        lookup[i] = entities.index(e)
    code = lookup[np.asarray(got["series_id"])]
    values = np.asarray(got["value"], dtype=np.float64)
    if not len(values):
        return [(None, None, None)]
    picked = {"e": code, "v": values}  # noqa: F841 - DuckDB scans the local NumPy columns
    quantiles = dict(
        con.execute(
            f"SELECT e, quantile_cont(v, [{', '.join(map(str, QUANTILES))}]) FROM picked "
            "GROUP BY GROUPING SETS ((e), ())"
        ).fetchall()
    )
    rows: list[tuple[Any, ...]] = []
    sums: list[float] = []
    for c, entity in enumerate(entities):
        mine = values[code == c]
        if len(mine):
            sums.append(math.fsum(mine.tolist()))
            rows.append((entity, sums[-1] / len(mine), quantiles[c]))
    # over all of them: the entities' exact sums, added in the entities' order
    rows.append((None, math.fsum(sums) / len(values), quantiles[None]))
    return rows


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


#: Rules that name a symptom (the GPU is idle) rather than its cause; a second of lost time
#: that a cause also explains is attributed to the cause.
SYMPTOM_RULES = frozenset({STARVATION, IDLE_RESERVED})


def lost_by_cause(findings: list[Finding]) -> dict[str, float]:
    """Seconds lost per rule, each second counted once: causes claim their windows before
    symptoms, and bigger losses before smaller ones. Per rule the worst entity counts
    (synchronous peers wait for it)."""
    worst: dict[str, Finding] = {}
    for f in findings:
        if f.lost_s > 0 and (f.rule not in worst or f.lost_s > worst[f.rule].lost_s):
            worst[f.rule] = f
    claimed: list[tuple[float, float]] = []
    out: dict[str, float] = {}
    for f in sorted(worst.values(), key=lambda f: (f.rule in SYMPTOM_RULES, -f.lost_s, f.rule)):
        spans = [(_epoch(a), _epoch(b)) for a, b in finding_windows(f)]
        total = sum(max(0.0, b - a) for a, b in spans)
        if total <= 0:
            out[f.rule] = f.lost_s
            continue
        free = sum(_uncovered(a, b, claimed) for a, b in spans)
        out[f.rule] = f.lost_s * free / total
        claimed.extend(spans)
    return out


def _epoch(ts: datetime) -> float:
    return ts.replace(tzinfo=timezone.utc).timestamp()


def _uncovered(a: float, b: float, claimed: list[tuple[float, float]]) -> float:
    """Length of ``[a, b)`` outside every claimed interval."""
    cuts = sorted((max(a, x), min(b, y)) for x, y in claimed if y > a and x < b)
    free, at = 0.0, a
    for x, y in cuts:
        if x > at:
            free += x - at
        at = max(at, y)
    return free + max(0.0, b - at)


class _Beside:
    """:func:`busy_and_energy` on its own cursor and thread, from :meth:`start` (the analysis'
    scan is done) to :meth:`result` (which runs it inline if it never started, and re-raises)."""

    def __init__(self, con: LocalReadConnection, run_id: str) -> None:
        self._con, self._run_id = con, run_id
        self._thread: threading.Thread | None = None
        self._rows: DeviceRows | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._rows = busy_and_energy(self._con, self._run_id, accelerator_plan())
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="report-summary", daemon=True)
            self._thread.start()

    def abandon(self) -> None:
        """Wait for a started read (a thread cannot be cancelled) and drop what it got."""
        if self._thread is not None:
            self._thread.join()
        self._con.close()

    def result(self) -> DeviceRows:
        try:
            if self._thread is None:
                self._run()
            else:
                self._thread.join()
        finally:
            self._con.close()
        if self._error is not None:
            raise self._error
        assert self._rows is not None
        return self._rows


def device_noun(plan: AcceleratorPlan, entities: list[str]) -> str:
    """What the report calls these devices, from their sources' declared kind (``hw.type``)."""
    nouns = set()
    for entity in entities:
        source = next(
            (s for s in plan.sources if any(re.fullmatch(p, entity) for p in s.patterns)), None
        )
        nouns.add(source.noun if source is not None else "accelerator")
    return nouns.pop() if len(nouns) == 1 else "accelerator"
