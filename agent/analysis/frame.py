"""One pass over ``samples`` into small bucketed frames that every rule reads.

The raw samples are scanned once: a single ``GROUP BY entity, metric, bucket`` keeps per bucket
the count, mean, extremes and the share of near-zero samples (``aw_agg``). Counters become
reset-safe increases and rates with a window function over that small aggregate, never over raw
samples (``aw_rated``). The rest are pivots of ``aw_rated``:

``aw_gpu(entity, t, <GPU_COLUMNS>, util_low, util_max, util_min)`` - top-level GPUs (Arrow)
``aw_host(t, <HOST_COLUMNS>, core_max, disk_read, disk_write, disk_busy, ib_rx, ib_tx)``
``aw_proc(t, main_cpu, worker_cpu, worker_cpu_max, workers, job_cpu, job_read, job_write)``
``aw_steps(entity, t, step_time, step_n, steps)``
``aw_rated(source, entity, metric, t, bucket_s, n, avg, min, max, low_share, inc, val)``

``t`` is the bucket start in epoch seconds; ``val`` is the mean for gauges and the per-second
rate for counters (``inc`` their increase). Column aliases map to catalog names, checked at
import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import numpy as np

from agent.analysis.thresholds import IDLE_SAMPLE
from agent.catalog import CATALOG
from agent.catalog.gpu import CLOCK_EVENT_FLAGS
from agent.catalog.host import SOURCE as HOST_SOURCE
from agent.catalog.process import SOURCE as PROCESS_SOURCE
from agent.catalog.steps import SOURCE as STEPS_SOURCE

GPU_SOURCE = CATALOG["gpu.utilization"].source

#: Clock-event reasons the rules read (idle lowers clocks legitimately; the rest throttle).
THROTTLE_REASONS_READ = (
    "gpu_idle",
    "sw_power_cap",
    "hw_slowdown",
    "sw_thermal",
    "hw_thermal",
    "hw_power_brake",
)
if not set(THROTTLE_REASONS_READ) <= set(CLOCK_EVENT_FLAGS):
    raise ValueError("THROTTLE_REASONS_READ names a reason the catalog does not declare")

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
    **{
        f"thr_{flag}": f"gpu.clock_event.{flag}"
        for flag in CLOCK_EVENT_FLAGS
        if flag in THROTTLE_REASONS_READ
    },
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
    *GPU_COLUMNS.values(),
    *HOST_COLUMNS.values(),
    *(c[3] for c in HOST_SPREAD_COLUMNS),
    PROCESS_CPU,
    PROCESS_READ,
    PROCESS_WRITE,
    STEP_TIME,
    STEP_COUNT,
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


def naive_utc(epoch_s: float) -> datetime:
    """Epoch seconds as the naive UTC datetime DuckDB's TIMESTAMP columns hold."""
    return datetime(1970, 1, 1) + timedelta(seconds=float(epoch_s))


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _pick(
    alias: str, metric_name: str, agg: str = "any_value", col: str = "val", extra: str = ""
) -> str:
    return f"{agg}({col}) FILTER (WHERE metric = {_q(metric_name)}{extra}) AS {alias}"


def _in_list(names: Iterable[str]) -> str:
    return ", ".join(_q(n) for n in names)


#: (metric, source) rows of every analysed metric, for an inline VALUES list.
_METRIC_SOURCE_ROWS = ", ".join(f"({_q(m)}, {_q(CATALOG[m].source)})" for m in ANALYSED_METRICS)
#: (metric, column number in ``aw_gpu``) rows of the GPU columns.
_GPU_CODE_ROWS = ", ".join(f"({_q(m)}, {i})" for i, m in enumerate(GPU_COLUMNS.values()))


def build_frames(con: duckdb.DuckDBPyConnection, window: Window) -> FrameInfo:
    """Aggregate the window's samples once and create the ``aw_*`` frames on ``con``."""
    # GPU sub-entities (gpu0/nvlink3, gpu0/pid42, gpu0/mig1) carry detail no rule reads
    # (InfiniBand ports, ib:mlx5_0/1, do count). Metric
    # names are catalog constants, inlined so DuckDB filters the scan instead of joining.
    where = [
        "run_id = $run",
        f"metric IN ({_in_list(ANALYSED_METRICS)})",
        "NOT (contains(entity, '/') AND starts_with(entity, 'gpu'))",
    ]
    params: dict[str, object] = {
        "run": window.run_id,
        "bucket_us": int(round(window.bucket_s * 1e6)),
    }
    if window.start is not None:
        where.append("ts >= $start")
        params["start"] = window.start
    if window.end is not None:
        where.append("ts < $end")
        params["end"] = window.end
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE aw_agg AS
        SELECT entity, metric, epoch_us(ts) // $bucket_us AS k,
               count(*) AS n, avg(value) AS avg, min(value) AS min, max(value) AS max,
               avg(CASE WHEN value < {IDLE_SAMPLE} THEN 1.0 ELSE 0.0 END) AS low_share
        FROM samples WHERE {" AND ".join(where)}
        GROUP BY entity, metric, k""",
        params,
    )
    # Counters only grow, so a bucket's max is its last value: the increase is the step from the
    # previous bucket's max. After a reset (the bucket's min fell below that max) it counts the
    # rise before the reset plus the bucket's min, off by at most one bucket's increase.
    counters, bucket = _in_list(COUNTER_METRICS), f"{float(window.bucket_s)}::DOUBLE"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_counters AS
        SELECT entity, metric, k, inc, inc / ({bucket} * coalesce(k - prev_k, 1)) AS val
        FROM (SELECT *, CASE WHEN prev_max IS NULL THEN max - min
                             WHEN min >= prev_max THEN max - prev_max
                             ELSE greatest(max - prev_max, 0) + min END AS inc
              FROM (SELECT *, lag(max) OVER w AS prev_max, lag(k) OVER w AS prev_k
                    FROM aw_agg WHERE metric IN ({counters})
                    WINDOW w AS (PARTITION BY entity, metric ORDER BY k)))""")
    # A metric belongs to one source (the catalog says which), so the raw scan skips `source`.
    rated = f"""
        WITH sources(metric, source) AS (VALUES {_METRIC_SOURCE_ROWS})
        SELECT source, a.entity, a.metric, a.k * {bucket} AS t, {bucket} AS bucket_s, a.n,
               a.avg, a.min, a.max, a.low_share, c.inc, coalesce(c.val, a.avg) AS val
        FROM aw_agg a JOIN sources USING (metric) LEFT JOIN aw_counters c USING (entity, metric, k)"""
    if window.start is None:
        # A whole run: up to millions of rows; each pivot reads one source of it, filtered early.
        con.execute(f"CREATE OR REPLACE TEMP VIEW aw_rated AS {rated}")
    else:
        # A live window: a few thousand rows, read by every pivot; materialized once.
        con.execute(f"CREATE OR REPLACE TEMP TABLE aw_rated_rows AS {rated}")
        con.execute("CREATE OR REPLACE TEMP VIEW aw_rated AS SELECT * FROM aw_rated_rows")
    _gpu_frame(con)
    _host_frame(con)
    _process_frame(con, window.run_id)
    _steps_frame(con)
    return _describe(con, window)


def _gpu_frame(con: duckdb.DuckDBPyConnection) -> None:
    """Pivot the GPUs' long rows into ``aw_gpu`` with NumPy (a scatter into a dense
    entity x bucket x metric array), loaded into a temp table."""
    aliases = list(GPU_COLUMNS)
    names = [
        r[0]
        for r in con.execute(
            f"SELECT DISTINCT entity FROM aw_agg WHERE metric IN ({_in_list(GPU_COLUMNS.values())}) "
            "AND regexp_full_match(entity, 'gpu[0-9]+') ORDER BY length(entity), entity"
        ).fetchall()
    ]
    named = ", ".join(f"({_q(n)}, {i})" for i, n in enumerate(names)) or "(NULL, NULL)"
    cols = con.execute(f"""
        WITH codes(metric, code) AS (VALUES {_GPU_CODE_ROWS}),
        names(entity, ecode) AS (VALUES {named})
        SELECT ecode, code, t, val, low_share, max, min
        FROM aw_rated JOIN names USING (entity) JOIN codes USING (metric)""").fetchnumpy()
    t = cols["t"].astype(np.float64)
    times = np.unique(t)
    shape = (len(names), len(times))
    slot = (cols["ecode"].astype(np.int64), np.searchsorted(times, t))
    grid = np.full((*shape, len(aliases)), np.nan)
    grid[(*slot, cols["code"].astype(np.int64))] = cols["val"]
    util = cols["code"] == aliases.index("util")
    extra = {}
    for name, source in (("util_low", "low_share"), ("util_max", "max"), ("util_min", "min")):
        plane = np.full(shape, np.nan)
        plane[slot[0][util], slot[1][util]] = cols[source][util]
        extra[name] = plane
    present = np.zeros(shape, dtype=bool)
    present[slot] = True
    e_idx, t_idx = np.nonzero(present)
    gpu_columns = {  # noqa: F841 - scanned by DuckDB as a dict of NumPy arrays
        "entity": np.array(names, dtype=object)[e_idx] if names else np.array([], dtype=object),
        "t": times[t_idx],
        **{a: grid[e_idx, t_idx, i] for i, a in enumerate(aliases)},
        **{a: plane[e_idx, t_idx] for a, plane in extra.items()},
    }
    # NumPy rather than Arrow keeps pyarrow out of the agent process (live analysis runs there);
    # NaN marks an empty cell of the dense grid and becomes NULL. Materialized: rules query the
    # frame a dozen times, and a native table is cheaper to scan than a registered one.
    values = ", ".join(f"nullif({a}, 'NaN'::DOUBLE) AS {a}" for a in [*aliases, *extra])
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE aw_gpu AS SELECT entity, t, {values} FROM gpu_columns"
    )


#: The machine's sources (host, and the disks and fabric ports that left it), from the catalog.
_HOST_FRAME_SOURCES = sorted(
    {HOST_SOURCE}
    | {CATALOG[m].source for m in (*HOST_COLUMNS.values(), *(c[3] for c in HOST_SPREAD_COLUMNS))}
)


def _host_frame(con: duckdb.DuckDBPyConnection) -> None:
    cols = [
        _pick(alias, name, extra=" AND entity = 'host'") for alias, name in HOST_COLUMNS.items()
    ]
    cols += [
        _pick(alias, name, agg=agg, extra=f" AND starts_with(entity, {_q(prefix)})")
        for alias, agg, prefix, name in HOST_SPREAD_COLUMNS
    ]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_host AS
        SELECT t, {", ".join(cols)}
        FROM aw_rated WHERE source IN ({_in_list(_HOST_FRAME_SOURCES)}) GROUP BY t""")


def _process_frame(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE aw_proc AS
        WITH roles AS (
            SELECT entity, json_extract_string(attrs, '$.role') AS role FROM entities
            WHERE run_id = $run AND source = {_q(PROCESS_SOURCE)})
        SELECT t,
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
        WHERE r.source = {_q(PROCESS_SOURCE)} GROUP BY t""",
        {"run": run_id},
    )


def _steps_frame(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE aw_steps AS
        SELECT entity, t,
               {_pick("step_time", STEP_TIME)}, {_pick("step_n", STEP_TIME, col="n")},
               {_pick("steps", STEP_COUNT)}
        FROM aw_rated WHERE source = {_q(STEPS_SOURCE)} GROUP BY entity, t""")


def _describe(con: duckdb.DuckDBPyConnection, window: Window) -> FrameInfo:
    first, last = (
        None if k is None else naive_utc(k * window.bucket_s)
        for k in con.execute("SELECT min(k), max(k) FROM aw_agg").fetchone()
    )
    present = frozenset(r[0] for r in con.execute("SELECT DISTINCT metric FROM aw_agg").fetchall())
    gpus = tuple(
        r[0]
        for r in con.execute(
            "SELECT DISTINCT entity FROM aw_gpu ORDER BY length(entity), entity"
        ).fetchall()
    )
    job_gpus, job_known = _job_gpus(con, window.run_id, gpus, present)
    ranks = tuple(
        r[0]
        for r in con.execute(
            "SELECT DISTINCT entity FROM aw_steps ORDER BY length(entity), entity"
        ).fetchall()
    )
    return FrameInfo(window, first, last, gpus, job_gpus, job_known, present, ranks)


def _job_gpus(
    con: duckdb.DuckDBPyConnection, run_id: str, gpus: tuple[str, ...], present: frozenset[str]
) -> tuple[tuple[str, ...], bool]:
    """GPUs the job used (marked ``used_by_job`` or holding job memory; all when unknown),
    and whether that was known."""
    marked = {
        r[0]: r[1]
        for r in con.execute(
            "SELECT entity, json_extract_string(attrs, '$.used_by_job') FROM entities "
            f"WHERE run_id = ? AND source = {_q(GPU_SOURCE)}",
            [run_id],
        ).fetchall()
    }
    holding = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT entity FROM aw_gpu WHERE job_memory > 0 OR job_procs > 0"
        ).fetchall()
    }
    return select_job_gpus(gpus, marked, holding, GPU_COLUMNS["job_memory"] in present)


def select_job_gpus(
    gpus: Iterable[str], marked: Mapping[str, object], holding: set[str], job_memory_recorded: bool
) -> tuple[tuple[str, ...], bool]:
    """The job's GPUs: marked ``used_by_job`` or holding job memory; all of them when the
    recording says neither (second value: whether it was known). Shared with the live hang
    watch, which applies it to one snapshot."""
    gpus = tuple(gpus)
    known = job_memory_recorded or any(v is not None for v in marked.values())
    if not known:
        return gpus, False
    return tuple(
        g for g in gpus if g in holding or str(marked.get(g)) in ("true", "True", "1")
    ), True
