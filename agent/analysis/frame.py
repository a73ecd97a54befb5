"""One pass over ``samples`` into small bucketed frames that every rule reads.

The raw samples are scanned once: a single ``GROUP BY entity, metric, bucket`` keeps per bucket
the count, mean, extremes and the share of near-zero samples (``aw_agg``). Counters become
reset-safe increases and rates with a window function over that small aggregate, never over raw
samples (``aw_rated``). The rest are pivots of ``aw_rated``:

``aw_accel(entity, t, <ACCEL_COLUMNS>, busy_low, busy_max, busy_min)`` - every accelerator,
whatever its source, a column per metric role (:mod:`agent.analysis.frame_accel`)
``aw_host(t, <HOST_COLUMNS>, core_max, disk_read, disk_write, disk_busy, ib_rx, ib_tx)``
``aw_proc(t, main_cpu, worker_cpu, worker_cpu_max, workers, job_cpu, job_read, job_write)``
``aw_steps(entity, t, step_time, step_n, steps)``
``aw_rated(source, entity, metric, t, bucket_s, n, avg, min, max, low_share, inc, val)``

``t`` is the bucket start in epoch seconds; ``val`` is the mean for gauges and the per-second
rate for counters (``inc`` their increase). Host, process and step columns map to catalog
names (:mod:`agent.analysed`, checked at import); accelerator columns map to roles, resolved
per registered source (:mod:`agent.accelerators`).

A whole run read through the writer's stored buckets (schema 5) has ``aw_agg``'s rows as NumPy
columns already (:mod:`agent.analysis.frame_buckets`): ``aw_agg`` is then a view over them and
their series' labels, and the counters and the accelerator pivot are computed from the arrays
(:mod:`agent.analysis.frame_arrays`), equal to the SQL path's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import duckdb
import numpy as np

from agent.analysed import (
    BASE_METRICS,
    HOST_COLUMNS,
    HOST_SPREAD_COLUMNS,
    PROCESS_CPU,
    PROCESS_READ,
    PROCESS_WRITE,
    STEP_COUNT,
    STEP_TIME,
    analysed_series,
    analysed_series_where,
)
from agent.analysis.frame_accel import (
    AcceleratorPlan,
    accelerator_plan,
    build_accel_frame,
    job_accelerators,
    load_accel_frame,
    metric_names,
)
from agent.analysis.frame_arrays import (
    MergedRows,
    accel_rows,
    accelerators,
    concatenated,
    counter_rows,
)
from agent.analysis.frame_buckets import stored_bucket_batches
from agent.analysis.frame_sql import in_list, pick, q, time_bounds
from agent.analysis.thresholds import IDLE_SAMPLE
from agent.catalog import CATALOG, Metric
from agent.catalog.host import SOURCE as HOST_SOURCE
from agent.catalog.process import SOURCE as PROCESS_SOURCE
from agent.catalog.steps import SOURCE as STEPS_SOURCE
from agent.series import bucketed_values, has_series, series_filter

#: The analysed series' constants live in :mod:`agent.analysed` (the writer reads them too);
#: re-exported here for the rules and readers that import them from the frame.
__all__ = [
    "BASE_METRICS",
    "HOST_COLUMNS",
    "HOST_SPREAD_COLUMNS",
    "PROCESS_CPU",
    "PROCESS_READ",
    "PROCESS_WRITE",
    "STEP_COUNT",
    "STEP_TIME",
    "FrameInfo",
    "Window",
    "analysed_series_where",
    "build_frames",
    "naive_utc",
    "sql_counters",
]


@dataclass(frozen=True)
class Window:
    """What to analyse: a run, optionally only ``[start, end)``, in buckets of ``bucket_s``.
    ``stored_buckets``: read the writer's buckets where they serve (False: every raw value,
    as for a file without them)."""

    run_id: str
    bucket_s: float
    start: datetime | None = None
    end: datetime | None = None
    stored_buckets: bool = True


@dataclass(frozen=True)
class FrameInfo:
    """What the frames hold, so rules can pick the best signal present."""

    window: Window
    first: datetime | None
    last: datetime | None
    #: Every accelerator in the window → its source, in name order.
    sources: Mapping[str, str]
    job_accelerators: tuple[str, ...]
    #: Job accelerators whose use by the job is known (job memory, ``used_by_job``).
    attributed: frozenset[str]
    present: frozenset[str]
    ranks: tuple[str, ...]
    plan: AcceleratorPlan

    @property
    def accelerators(self) -> tuple[str, ...]:
        return tuple(self.sources)

    @property
    def bucket_s(self) -> float:
        return self.window.bucket_s

    @property
    def duration_s(self) -> float:
        if self.first is None or self.last is None:
            return 0.0
        return (self.last - self.first).total_seconds() + self.bucket_s

    def has(self, metric_name: str) -> bool:
        return metric_name in self.present

    def has_column(self, column: str) -> bool:
        """Whether any accelerator's source recorded the metric filling ``aw_accel.column``."""
        return any(m in self.present for m in self.metrics(column))

    def metrics(self, *columns: str, entity: str | None = None) -> list[str]:
        """The metric names behind ``aw_accel`` columns, for one accelerator or all of them
        (a finding's evidence names what was measured, whatever the driver)."""
        if entity is not None and entity in self.sources:
            names = [self.sources[entity]]
        else:
            names = list(dict.fromkeys(self.sources.values()))
        return metric_names(self.plan, names, columns)

    def noun(self, entities: Iterable[str] | None = None, *, plural: bool = False) -> str:
        """What findings call these accelerators ("GPU", or "accelerator" when their sources
        differ or declare no known hardware type)."""
        chosen = self.sources if entities is None else entities
        nouns = {
            s.noun if (s := self.plan.source(self.sources.get(e, ""))) else "accelerator"
            for e in chosen
        }
        word = nouns.pop() if len(nouns) == 1 else "accelerator"
        return word + "s" if plural else word

    def advice(self, topic: str, entities: Iterable[str] | None = None) -> str | None:
        """The next step the sources of these accelerators (default: the job's) declare for
        ``topic``, when they agree; None lets the rule say something neutral."""
        chosen = self.job_accelerators if entities is None else entities
        texts = {
            s.advice.get(topic) if (s := self.plan.source(self.sources.get(e, ""))) else None
            for e in chosen
        }
        text = texts.pop() if len(texts) == 1 else None
        return text or None

    def column_metric(self, entity: str, column: str) -> str | None:
        found = self.metrics(column, entity=entity)
        return found[0] if found else None


def naive_utc(epoch_s: float) -> datetime:
    """Epoch seconds as the naive UTC datetime DuckDB's TIMESTAMP columns hold."""
    return datetime(1970, 1, 1) + timedelta(seconds=float(epoch_s))


#: Build the counters, the accelerator pivot and ``aw_agg`` from the stored buckets' merged
#: arrays (:mod:`agent.analysis.frame_arrays`); False runs the SQL path on the same rows (an
#: A/B for tests and benchmarks: the frames and the report are the same either way).
FRAME_FROM_ARRAYS = True


def build_frames(
    con: duckdb.DuckDBPyConnection,
    window: Window,
    *,
    after_scan: Callable[[], None] | None = None,
) -> FrameInfo:
    """Aggregate the window's samples once and create the ``aw_*`` frames on ``con``.

    ``after_scan`` is called once that scan is done: the rest (pivots of the small aggregate,
    then the rules) runs mostly on one core, so a caller may start other reads beside it. (From
    stored buckets there is no scan: it is called once the merged arrays are freed.)"""
    plan = accelerator_plan()
    analysed, labels = analysed_series(plan)
    params: dict[str, object] = {
        "run": window.run_id,
        "bucket_us": int(round(window.bucket_s * 1e6)),
    }
    times = time_bounds(window.start, window.end, params)
    aggregates = f"""count(*) AS n, avg(value) AS avg, min(value) AS min, max(value) AS max,
               avg(CASE WHEN value < {IDLE_SAMPLE} THEN 1.0 ELSE 0.0 END) AS low_share"""
    # A metric belongs to one source (the catalog says which), so the raw scan skips `source`;
    # it is joined to the aggregated rows once, and every pivot filters aw_agg on it.
    declared = [CATALOG.get(m) for m in analysed]
    metric_sources = ", ".join(f"({q(m.name)}, {q(m.source)})" for m in declared if m is not None)
    sources = f"sources(metric, source) AS (VALUES {metric_sources or '(NULL, NULL)'})"
    series = has_series(con)
    arrays: MergedRows | None = None
    if series:
        # Schema 3: pick the run's analysed series in the small dictionary, aggregate by the
        # integer id (the scan reads series_id, ts and value only), join the names last.
        where = " AND ".join(labels)
        batches = None
        if window.stored_buckets:
            batches = stored_bucket_batches(con, window.run_id, where, window.bucket_s, times)
        named = """SELECT s.entity, s.metric, c.source, k, n, avg, min, max, low_share, series_id
            FROM agg JOIN series s USING (series_id) LEFT JOIN sources c ON c.metric = s.metric"""
        if batches is None:
            picked = series_filter(con, window.run_id, where)
            _create_frame(
                con,
                "TABLE",
                "aw_agg",
                f"""
                WITH agg AS (
                    SELECT series_id, k, {aggregates}
                    FROM ({bucketed_values(con, picked, times)}) GROUP BY series_id, k),
                {sources} {named}""",
                {k: v for k, v in params.items() if k != "run"},
            )
        elif FRAME_FROM_ARRAYS:
            arrays = _agg_from_arrays(con, window.run_id, where, concatenated(batches), sources)
        else:  # the SQL path over the merged rows (the A/B the tests compare against)
            merged = concatenated(batches)  # noqa: F841 - DuckDB scans the local NumPy columns
            with contextlib.suppress(duckdb.CatalogException):  # it is a table: replaced below
                con.execute("DROP VIEW IF EXISTS temp.main.aw_agg")
            con.execute(
                "CREATE OR REPLACE TEMP TABLE aw_agg AS "
                f"WITH agg AS (SELECT * FROM merged), {sources} {named}"
            )
    else:  # an older file or the live window, read as it is: labels on every row
        # (the live window's 32 MB leaves no room for joining the sources here: aw_rated does)
        _create_frame(
            con,
            "TABLE",
            "aw_agg",
            f"""
            SELECT entity, metric, NULL::VARCHAR AS source, epoch_us(ts) // $bucket_us AS k,
                   {aggregates}
            FROM samples WHERE {" AND ".join(["run_id = $run", *labels, *times])}
            GROUP BY entity, metric, k""",
            params,
        )
    if after_scan is not None and arrays is None:
        after_scan()
    # A series' rows are keyed by its integer id where aw_agg has it (windows and joins over
    # ~1 M rows on an integer cost half of those on two strings).
    key = "series_id" if series else "entity, metric"
    counted = None
    if arrays is not None:  # the same increases, from the arrays (agent/analysis/frame_arrays)
        counted = counter_rows(arrays, _counter_names(declared), window.bucket_s)
        rated_counters = counted[0]  # noqa: F841 - DuckDB scans the local NumPy columns
        con.execute("CREATE OR REPLACE TEMP TABLE aw_counters AS SELECT * FROM rated_counters")
    else:
        sql_counters(con, key, in_list(_counter_names(declared)), window.bucket_s)
    bucket = f"{float(window.bucket_s)}::DOUBLE"
    rated = f"""
        SELECT a.source, a.entity, a.metric, a.k * {bucket} AS t, {bucket} AS bucket_s, a.n,
               a.avg, a.min, a.max, a.low_share, c.inc, coalesce(c.val, a.avg) AS val
        FROM aw_agg a LEFT JOIN aw_counters c USING ({key}, k)
        WHERE a.source IS NOT NULL"""
    if not series:  # the sources were not joined to aw_agg (above): join them per row here
        rated = f"""
            WITH {sources}
            SELECT s.source, a.entity, a.metric, a.k * {bucket} AS t, {bucket} AS bucket_s,
                   a.n, a.avg, a.min, a.max, a.low_share, c.inc, coalesce(c.val, a.avg) AS val
            FROM aw_agg a JOIN sources s USING (metric)
            LEFT JOIN aw_counters c USING (entity, metric, k)"""
    if window.start is None:
        # A whole run: up to millions of rows; each pivot reads one source of it, filtered early.
        con.execute(f"CREATE OR REPLACE TEMP VIEW aw_rated AS {rated}")
    else:
        # A live window: a few thousand rows, read by every pivot; materialized once.
        con.execute(f"CREATE OR REPLACE TEMP TABLE aw_rated_rows AS {rated}")
        con.execute("CREATE OR REPLACE TEMP VIEW aw_rated AS SELECT * FROM aw_rated_rows")
    known = None
    if arrays is not None and counted is not None:
        accels = accelerators(con, arrays, plan)
        load_accel_frame(
            con, list(accels), accel_rows(arrays, plan, accels, counted, window.bucket_s)
        )
        known = _bounds_and_metrics(arrays)
        # The arrays (~100 MB at 24 h) are done with: free them before the reads beside start
        arrays = counted = None
        if after_scan is not None:
            after_scan()
    else:
        accels = build_accel_frame(con, plan)
    _host_frame(con)
    _process_frame(con, window.run_id)
    _steps_frame(con)
    return _describe(con, window, plan, accels, known)


def _create_frame(
    con: duckdb.DuckDBPyConnection, kind: str, name: str, sql: str, *args: Any
) -> None:
    """``CREATE OR REPLACE TEMP {kind} {name} AS {sql}``; a frame built the other way on this
    connection before (``aw_agg`` is a table over raw values and a view over stored buckets,
    and ``CREATE OR REPLACE`` replaces neither with the other) is dropped first. Costs nothing
    in the usual case: only a refused replace looks at the catalog."""
    statement = f"CREATE OR REPLACE TEMP {kind} {name} AS {sql}"
    try:
        con.execute(statement, *args)
    except duckdb.CatalogException:
        other = "VIEW" if kind == "TABLE" else "TABLE"
        con.execute(f"DROP {other} IF EXISTS temp.main.{name}")
        con.execute(statement, *args)


def _agg_from_arrays(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    where: str,
    merged: dict[str, np.ndarray],
    sources: str,
) -> MergedRows:
    """``aw_agg`` over the merged bucket arrays: their numbers in ``aw_agg_rows``, the labels
    of their ~340 series in ``aw_series``, and ``aw_agg`` the view joining them (the same
    columns as the table the raw path creates). Not repeating three label strings on each of
    ~1 M rows halves the frame's memory and the time to load it; the few rules that read
    ``aw_agg`` filter it by metric, which DuckDB applies to the small side of the join."""
    rows = merged  # noqa: F841 - DuckDB scans the local NumPy columns
    con.execute("CREATE OR REPLACE TEMP TABLE aw_agg_rows AS SELECT * FROM rows")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE aw_series AS WITH {sources}
            SELECT s.series_id, s.entity, s.metric, c.source
            FROM (SELECT * FROM series WHERE run_id = ? AND {where}) s
            LEFT JOIN sources c ON c.metric = s.metric""",
        [run_id],
    )
    _create_frame(
        con,
        "VIEW",
        "aw_agg",
        """SELECT s.entity, s.metric, s.source, a.k, a.n, a.avg, a.min, a.max, a.low_share,
               a.series_id
        FROM aw_agg_rows a JOIN aw_series s USING (series_id)""",
    )
    found = con.execute("SELECT series_id, entity, metric FROM aw_series").fetchall()
    return MergedRows(merged, {int(s): (e, m) for s, e, m in found})


def _counter_names(declared: Iterable[Metric | None]) -> list[str]:
    return [m.name for m in declared if m is not None and m.is_counter]


def sql_counters(con: duckdb.DuckDBPyConnection, key: str, counters: str, bucket_s: float) -> None:
    """``aw_counters(key, k, inc, val)`` from ``aw_agg``'s rows of the ``counters`` (an
    ``IN`` list), ``key`` naming a series' columns.

    Counters only grow, so a bucket's max is its last value: the increase is the step from the
    previous bucket's max. After a reset (the bucket's min fell below that max) it counts the
    rise before the reset plus the bucket's min, off by at most one bucket's increase."""
    bucket = f"{float(bucket_s)}::DOUBLE"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_counters AS
        SELECT {key}, k, inc, inc / ({bucket} * coalesce(k - prev_k, 1)) AS val
        FROM (SELECT *, CASE WHEN prev_max IS NULL THEN max - min
                             WHEN min >= prev_max THEN max - prev_max
                             ELSE greatest(max - prev_max, 0) + min END AS inc
              FROM (SELECT *, lag(max) OVER w AS prev_max, lag(k) OVER w AS prev_k
                    FROM aw_agg WHERE metric IN ({counters})
                    WINDOW w AS (PARTITION BY {key} ORDER BY k)))""")


#: The machine's sources (host, and the disks and fabric ports that left it), from the catalog.
_HOST_FRAME_SOURCES = sorted(
    {HOST_SOURCE}
    | {CATALOG[m].source for m in (*HOST_COLUMNS.values(), *(c[3] for c in HOST_SPREAD_COLUMNS))}
)


def _host_frame(con: duckdb.DuckDBPyConnection) -> None:
    cols = [pick(alias, name, extra=" AND entity = 'host'") for alias, name in HOST_COLUMNS.items()]
    cols += [
        pick(alias, name, agg=agg, extra=f" AND starts_with(entity, {q(prefix)})")
        for alias, agg, prefix, name in HOST_SPREAD_COLUMNS
    ]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_host AS
        SELECT t, {", ".join(cols)}
        FROM aw_rated WHERE source IN ({in_list(_HOST_FRAME_SOURCES)}) GROUP BY t""")


def _process_frame(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE aw_proc AS
        WITH roles AS (
            SELECT entity, json_extract_string(attrs, '$.role') AS role FROM entities
            WHERE run_id = $run AND source = {q(PROCESS_SOURCE)})
        SELECT t,
               sum(val) FILTER (WHERE metric = {q(PROCESS_CPU)} AND role = 'main') AS main_cpu,
               sum(val) FILTER (WHERE metric = {q(PROCESS_CPU)} AND role = 'worker')
                   AS worker_cpu,
               max(val) FILTER (WHERE metric = {q(PROCESS_CPU)} AND role = 'worker')
                   AS worker_cpu_max,
               count(DISTINCT r.entity) FILTER (WHERE metric = {q(PROCESS_CPU)}
                                                AND role = 'worker') AS workers,
               sum(val) FILTER (WHERE metric = {q(PROCESS_CPU)}) AS job_cpu,
               sum(val) FILTER (WHERE metric = {q(PROCESS_READ)}) AS job_read,
               sum(val) FILTER (WHERE metric = {q(PROCESS_WRITE)}) AS job_write
        FROM aw_rated r LEFT JOIN roles USING (entity)
        WHERE r.source = {q(PROCESS_SOURCE)} GROUP BY t""",
        {"run": run_id},
    )


def _steps_frame(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_steps AS
        SELECT entity, t,
               {pick("step_time", STEP_TIME)}, {pick("step_n", STEP_TIME, col="n")},
               {pick("steps", STEP_COUNT)}
        FROM aw_rated WHERE source = {q(STEPS_SOURCE)} GROUP BY entity, t""")


def _bounds_and_metrics(arrays: MergedRows) -> tuple[tuple[Any, Any], frozenset[str]] | None:
    """``aw_agg``'s first and last bucket and the metrics it holds, from the arrays."""
    ks = np.asarray(arrays.columns.get("k", ()))
    if not len(ks):
        return None
    return (int(ks.min()), int(ks.max())), frozenset(arrays.labels[i][1] for i in arrays.present())


def _describe(
    con: duckdb.DuckDBPyConnection,
    window: Window,
    plan: AcceleratorPlan,
    accels: Mapping[str, str],
    known: tuple[tuple[Any, Any], frozenset[str]] | None = None,
) -> FrameInfo:
    if known is not None:
        bounds, present = known
    else:
        bounds = con.execute("SELECT min(k), max(k) FROM aw_agg").fetchone() or (None, None)
        present = frozenset(
            r[0] for r in con.execute("SELECT DISTINCT metric FROM aw_agg").fetchall()
        )
    first, last = (None if k is None else naive_utc(k * window.bucket_s) for k in bounds)
    sampled = {r[0] for r in con.execute("SELECT DISTINCT entity FROM aw_accel").fetchall()}
    sources = MappingProxyType({e: s for e, s in accels.items() if e in sampled})
    job, attributed = job_accelerators(con, window.run_id, plan, sources, present)
    ranks = tuple(
        r[0]
        for r in con.execute(
            "SELECT DISTINCT entity FROM aw_steps ORDER BY length(entity), entity"
        ).fetchall()
    )
    return FrameInfo(window, first, last, sources, job, attributed, present, ranks, plan)
