"""One pass over ``samples`` into small bucketed frames that every rule reads.

The raw samples are scanned once: a single ``GROUP BY entity, metric, time_bucket`` keeps per
bucket the mean, extremes, first/last value and the share of near-zero samples. Counters become
reset-safe rates (a window function over the small aggregate, never over raw samples). The
result is pivoted into wide per-source temp tables on the connection:

``aw_gpu(entity, bucket, t, <GPU_COLUMNS>, util_low, util_max)`` - top-level GPUs only
``aw_host(bucket, t, <HOST_COLUMNS>, core_max, disk_read, disk_write, disk_busy, ib)``
``aw_proc(bucket, t, main_cpu, worker_cpu, worker_cpu_max, workers, job_cpu, job_read, job_write)``
``aw_steps(entity, bucket, t, step_time, steps)``
``aw_rated(source, entity, metric, bucket, t, bucket_s, n, avg, min, max, low_share, val)``

``t`` is the bucket start in epoch seconds; ``val`` is the mean for gauges and the per-second
rate for counters. Column aliases map to catalog names, which are checked at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import duckdb

from agent.analysis.thresholds import IDLE_SAMPLE
from agent.catalog import CATALOG
from agent.catalog.gpu import CLOCK_EVENT_FLAGS
from agent.catalog.host import SOURCE as HOST_SOURCE
from agent.catalog.process import SOURCE as PROCESS_SOURCE
from agent.catalog.steps import SOURCE as STEPS_SOURCE

GPU_SOURCE = CATALOG["gpu.utilization"].source

GPU_COLUMNS: Mapping[str, str] = {
    "util": "gpu.utilization",
    "mem_util": "gpu.memory.utilization",
    "sm": "gpu.sm.activity",
    "tensor": "gpu.tensor.activity",
    "dram": "gpu.dram.activity",
    "fp16": "gpu.fp16.activity",
    "fp32": "gpu.fp32.activity",
    "mem_used": "gpu.memory.used",
    "mem_total": "gpu.memory.total",
    "temp": "gpu.temperature",
    "power": "gpu.power",
    "power_limit": "gpu.power.limit",
    "clock_sm": "gpu.clock.sm",
    "clock_sm_max": "gpu.clock.sm.max",
    "pcie_tx": "gpu.pcie.tx_throughput",
    "pcie_rx": "gpu.pcie.rx_throughput",
    "pcie_gen": "gpu.pcie.link.gen",
    "pcie_gen_max": "gpu.pcie.link.gen.max",
    "pcie_width": "gpu.pcie.link.width",
    "pcie_width_max": "gpu.pcie.link.width.max",
    "pcie_replays": "gpu.pcie.replays",
    "nvlink_tx": "gpu.nvlink.tx_throughput",
    "nvlink_rx": "gpu.nvlink.rx_throughput",
    "nvlink_links": "gpu.nvlink.active_links",
    "energy": "gpu.energy",
    "xid": "gpu.xid",
    "ecc_uncorrected": "gpu.ecc.volatile.uncorrected",
    "remap_uncorrectable": "gpu.remapped_rows.uncorrectable",
    "remap_pending": "gpu.remapped_rows.pending",
    "remap_failure": "gpu.remapped_rows.failure",
    "job_memory": "gpu.job.memory",
    "job_procs": "gpu.job.processes",
    **{f"thr_{flag}": f"gpu.clock_event.{flag}" for flag in CLOCK_EVENT_FLAGS},
}
HOST_COLUMNS: Mapping[str, str] = {
    "cpu": "host.cpu.utilization",
    "iowait": "host.cpu.iowait",
    "cpu_count": "host.cpu.count",
    "mem_util": "host.memory.utilization",
    "swap_in": "host.swap.in",
}
#: (alias, aggregate, entity prefix, metric) for columns summed or maxed over host entities.
HOST_SPREAD_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("core_max", "max", "cpu", "host.cpu.utilization"),
    ("disk_read", "sum", "disk:", "host.disk.read_bytes"),
    ("disk_write", "sum", "disk:", "host.disk.write_bytes"),
    ("disk_busy", "max", "disk:", "host.disk.busy_time"),
    ("ib_rx", "sum", "ib:", "host.ib.rx_bytes"),
    ("ib_tx", "sum", "ib:", "host.ib.tx_bytes"),
)
PROCESS_CPU = "process.cpu.utilization"
PROCESS_READ = "process.io.read_bytes"
PROCESS_WRITE = "process.io.write_bytes"
STEP_TIME = "step.time"
STEP_COUNT = "step.count"

_ALL_NAMES = (
    *GPU_COLUMNS.values(), *HOST_COLUMNS.values(), *(c[3] for c in HOST_SPREAD_COLUMNS),
    PROCESS_CPU, PROCESS_READ, PROCESS_WRITE, STEP_TIME, STEP_COUNT,
)
for _name in _ALL_NAMES:  # fail at import if a column refers to a metric the catalog lacks
    CATALOG[_name]
ANALYSED_METRICS: tuple[str, ...] = tuple(dict.fromkeys(_ALL_NAMES))
COUNTER_METRICS: tuple[str, ...] = tuple(m for m in ANALYSED_METRICS if CATALOG[m].is_counter)


@dataclass(frozen=True)
class Window:
    """What to analyse: a run, optionally only ``[start, end)``, in buckets of ``bucket_s``."""

    run_id: str
    bucket_s: float
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class FrameInfo:
    """What the frames hold, so rules can pick the best signal present."""

    window: Window
    first: datetime | None
    last: datetime | None
    gpus: tuple[str, ...]
    job_gpus: tuple[str, ...]
    job_known: bool
    present: frozenset[str]
    ranks: tuple[str, ...]

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


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _pick(alias: str, metric_name: str, agg: str = "any_value", col: str = "val",
          extra: str = "") -> str:
    return f"{agg}({col}) FILTER (WHERE metric = {_q(metric_name)}{extra}) AS {alias}"


def build_frames(con: duckdb.DuckDBPyConnection, window: Window) -> FrameInfo:
    """Aggregate the window's samples once and create the ``aw_*`` temp tables."""
    where = ["run_id = $run", "metric IN (SELECT unnest($metrics))"]
    params: dict[str, object] = {"run": window.run_id, "metrics": list(ANALYSED_METRICS),
                                 "bucket": window.bucket_s}
    if window.start is not None:
        where.append("ts >= $start")
        params["start"] = window.start
    if window.end is not None:
        where.append("ts < $end")
        params["end"] = window.end
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_agg AS
        SELECT source, entity, metric,
               time_bucket(to_microseconds(CAST($bucket * 1e6 AS BIGINT)), ts) AS bucket,
               count(*) AS n, avg(value) AS avg, min(value) AS min, max(value) AS max,
               avg(CASE WHEN value < {IDLE_SAMPLE} THEN 1.0 ELSE 0.0 END) AS low_share,
               arg_min(value, ts) AS first, arg_max(value, ts) AS last
        FROM samples WHERE {' AND '.join(where)}
        GROUP BY ALL""", params)
    # Counters: increase inside the bucket (a reset inside it: rise before + value after) plus
    # the step from the previous bucket's last value (a reset between buckets: the new value).
    con.execute("""
        CREATE OR REPLACE TEMP TABLE aw_rated AS
        SELECT source, entity, metric, bucket, epoch(bucket) AS t, $bucket AS bucket_s, n, avg,
               min, max, low_share,
               CASE WHEN metric IN (SELECT unnest($counters)) THEN
                   ((CASE WHEN last >= first THEN last - first ELSE (max - first) + last END)
                    + coalesce(CASE WHEN first >= prev_last THEN first - prev_last
                                    ELSE first END, 0)) / $bucket
               ELSE avg END AS val
        FROM (SELECT *, lag(last) OVER (PARTITION BY source, entity, metric ORDER BY bucket)
                        AS prev_last FROM aw_agg)""",
        {"counters": list(COUNTER_METRICS), "bucket": window.bucket_s})
    _gpu_frame(con)
    _host_frame(con)
    _process_frame(con, window.run_id)
    _steps_frame(con)
    return _describe(con, window)


def _gpu_frame(con: duckdb.DuckDBPyConnection) -> None:
    cols = ",\n".join(_pick(alias, name) for alias, name in GPU_COLUMNS.items())
    util = GPU_COLUMNS["util"]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_gpu AS
        SELECT entity, bucket, any_value(t) AS t, {cols},
               {_pick('util_low', util, col='low_share')},
               {_pick('util_max', util, agg='max', col='max')},
               {_pick('util_min', util, agg='min', col='min')}
        FROM aw_rated
        WHERE source = {_q(GPU_SOURCE)} AND regexp_full_match(entity, 'gpu[0-9]+')
        GROUP BY entity, bucket""")


def _host_frame(con: duckdb.DuckDBPyConnection) -> None:
    cols = [_pick(alias, name, extra=" AND entity = 'host'") for alias, name in HOST_COLUMNS.items()]
    cols += [
        _pick(alias, name, agg=agg, extra=f" AND starts_with(entity, {_q(prefix)})")
        for alias, agg, prefix, name in HOST_SPREAD_COLUMNS
    ]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_host AS
        SELECT bucket, any_value(t) AS t, {', '.join(cols)}
        FROM aw_rated WHERE source = {_q(HOST_SOURCE)} GROUP BY bucket""")


def _process_frame(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_proc AS
        WITH roles AS (
            SELECT entity, json_extract_string(attrs, '$.role') AS role FROM entities
            WHERE run_id = $run AND source = {_q(PROCESS_SOURCE)})
        SELECT bucket, any_value(t) AS t,
               sum(val) FILTER (WHERE metric = {_q(PROCESS_CPU)} AND role = 'main') AS main_cpu,
               sum(val) FILTER (WHERE metric = {_q(PROCESS_CPU)} AND role = 'worker')
                   AS worker_cpu,
               max(val) FILTER (WHERE metric = {_q(PROCESS_CPU)} AND role = 'worker')
                   AS worker_cpu_max,
               count(DISTINCT r.entity) FILTER (WHERE metric = {_q(PROCESS_CPU)}
                                                AND role = 'worker') AS workers,
               sum(val) FILTER (WHERE metric = {_q(PROCESS_CPU)}) AS job_cpu,
               sum(val) FILTER (WHERE metric = {_q(PROCESS_READ)}) AS job_read,
               sum(val) FILTER (WHERE metric = {_q(PROCESS_WRITE)}) AS job_write
        FROM aw_rated r LEFT JOIN roles USING (entity)
        WHERE r.source = {_q(PROCESS_SOURCE)} GROUP BY bucket""", {"run": run_id})


def _steps_frame(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_steps AS
        SELECT entity, bucket, any_value(t) AS t,
               {_pick('step_time', STEP_TIME)}, {_pick('step_n', STEP_TIME, col='n')},
               {_pick('steps', STEP_COUNT)}
        FROM aw_rated WHERE source = {_q(STEPS_SOURCE)} GROUP BY entity, bucket""")


def _describe(con: duckdb.DuckDBPyConnection, window: Window) -> FrameInfo:
    first, last = con.execute("SELECT min(bucket), max(bucket) FROM aw_agg").fetchone()
    present = frozenset(r[0] for r in con.execute("SELECT DISTINCT metric FROM aw_agg").fetchall())
    gpus = tuple(r[0] for r in con.execute(
        "SELECT DISTINCT entity FROM aw_gpu ORDER BY length(entity), entity").fetchall())
    job_gpus, job_known = _job_gpus(con, window.run_id, gpus, present)
    ranks = tuple(r[0] for r in con.execute(
        "SELECT DISTINCT entity FROM aw_steps ORDER BY length(entity), entity").fetchall())
    return FrameInfo(window, first, last, gpus, job_gpus, job_known, present, ranks)


def _job_gpus(con: duckdb.DuckDBPyConnection, run_id: str, gpus: tuple[str, ...],
              present: frozenset[str]) -> tuple[tuple[str, ...], bool]:
    """GPUs the job used (marked ``used_by_job`` or holding job memory; all when unknown),
    and whether that was known."""
    marked = {r[0]: r[1] for r in con.execute(
        "SELECT entity, json_extract_string(attrs, '$.used_by_job') FROM entities "
        f"WHERE run_id = ? AND source = {_q(GPU_SOURCE)}", [run_id]).fetchall()}
    holding = {r[0] for r in con.execute(
        "SELECT DISTINCT entity FROM aw_gpu WHERE job_memory > 0 OR job_procs > 0").fetchall()}
    known = GPU_COLUMNS["job_memory"] in present or any(v is not None for v in marked.values())
    if not known:
        return gpus, False
    return tuple(g for g in gpus if g in holding or marked.get(g) in ("true", "True", "1")), True
