"""The accelerator frame ``aw_accel``: every entity of kind ``accelerator``, whatever its source.

Which entities are accelerators comes from the source registry (their ``EntityKind``), and which
metric fills a column from the metric's **role** (``agent/catalog/roles.py``): ``busy`` is
whatever metric of the entity's source plays ``accelerator.busy`` (``gpu.utilization`` for NVML,
a duty cycle for a TPU); the plan that says so is :mod:`agent.accelerators`. A rule written
over ``aw_accel`` therefore applies to every accelerator
whose source declares the roles it reads; a column the source does not declare stays NULL.

``aw_gpu`` remains as a view of ``aw_accel`` under the frame's former column names, for queries
written against it (``agent/report_html.py``, users' own SQL).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import duckdb
import numpy as np

from agent.accelerators import (
    ACCEL_COLUMNS,
    ACCELERATOR,
    COLUMN_OF_ROLE,
    AcceleratorPlan,
    AcceleratorSource,
    SourceColumns,
    accelerator_plan,
    accelerator_source,
)
from agent.analysis.frame_sql import q

#: The plan lives in :mod:`agent.accelerators` (the writer reads it too); re-exported here.
__all__ = [
    "ACCELERATOR",
    "ACCEL_COLUMNS",
    "BUSY_EXTRA",
    "COLUMN_OF_ROLE",
    "GPU_VIEW_COLUMNS",
    "AcceleratorPlan",
    "AcceleratorSource",
    "SourceColumns",
    "accelerator_plan",
    "accelerator_source",
    "build_accel_frame",
    "column_codes",
    "job_accelerators",
    "load_accel_frame",
    "metric_names",
    "select_job_accelerators",
]

#: Columns derived from ``busy``'s samples within a bucket (near-zero share, extremes).
BUSY_EXTRA = ("busy_low", "busy_max", "busy_min")
#: ``aw_gpu``'s former column names → ``aw_accel``'s.
GPU_VIEW_COLUMNS: Mapping[str, str] = MappingProxyType(
    {
        "util": "busy",
        "util_low": "busy_low",
        "util_max": "busy_max",
        "util_min": "busy_min",
        "dram": "mem_bw",
        "clock_sm": "clock",
        "clock_sm_max": "clock_max",
        "pcie_tx": "host_tx",
        "pcie_rx": "host_rx",
        "pcie_gen": "host_gen",
        "pcie_gen_max": "host_gen_max",
        "pcie_width": "host_width",
        "pcie_width_max": "host_width_max",
        "pcie_replays": "host_replays",
        "nvlink_tx": "peer_tx",
        "nvlink_rx": "peer_rx",
        "nvlink_links": "peer_links",
        "xid": "fault",
        "thr_gpu_idle": "thr_idle",
        "thr_sw_power_cap": "thr_power",
        "thr_hw_power_brake": "thr_power_brake",
        "thr_hw_slowdown": "thr_slowdown",
        "thr_sw_thermal": "thr_thermal",
        "thr_hw_thermal": "thr_thermal_hw",
    }
)


def build_accel_frame(con: duckdb.DuckDBPyConnection, plan: AcceleratorPlan) -> dict[str, str]:
    """Pivot the accelerators' long rows of ``aw_rated`` into ``aw_accel`` with NumPy (a scatter
    into a dense entity x bucket x column array), loaded into a temp table; returns the
    accelerators (entity → source) in name order."""
    pairs = plan.metric_sources()
    sources_rows = ", ".join(f"({q(m)}, {q(s)})" for m, s in pairs) or "(NULL, NULL)"
    found = con.execute(f"""
        WITH src(metric, source) AS (VALUES {sources_rows}),
        e AS (SELECT DISTINCT src.source, a.entity FROM aw_agg a JOIN src USING (metric))
        SELECT entity, source FROM e WHERE {plan.predicate}
        ORDER BY length(entity), entity, source""").fetchall()
    accels = dict(found)  # two sources naming a device alike share one row
    names = list(accels)
    codes = ", ".join(f"({q(m)}, {i})" for m, i in column_codes(plan).items())
    named = ", ".join(f"({q(n)}, {i})" for i, n in enumerate(names)) or "(NULL, NULL)"
    cols = con.execute(f"""
        WITH codes(metric, code) AS (VALUES {codes or "(NULL, NULL)"}),
        names(entity, ecode) AS (VALUES {named})
        SELECT ecode, code, t, val, low_share, max, min
        FROM aw_rated JOIN names USING (entity) JOIN codes USING (metric)""").fetchnumpy()
    load_accel_frame(con, names, cols)
    return accels


def column_codes(plan: AcceleratorPlan) -> dict[str, int]:
    """Every accelerator metric of the plan → the index of the ``aw_accel`` column it fills."""
    code_of = {a: i for i, a in enumerate(ACCEL_COLUMNS)}
    return {m: code_of[c] for s in plan.sources for c, m in s.columns.items()}


def load_accel_frame(
    con: duckdb.DuckDBPyConnection, names: Sequence[str], cols: Mapping[str, np.ndarray]
) -> None:
    """Create ``aw_accel`` (and ``aw_gpu``) from the accelerators' long rows ``cols``: ``ecode``
    (index into ``names``), ``code`` (see :func:`column_codes`), ``t``, ``val``, ``low_share``,
    ``max``, ``min``; whether they come from ``aw_rated`` or straight from the frame's arrays."""
    aliases = list(ACCEL_COLUMNS)
    busy_code = aliases.index("busy")
    t = np.asarray(cols["t"]).astype(np.float64)
    times, t_slot = _time_slots(t, cols.get("k"))
    shape = (len(names), len(times))
    code = np.asarray(cols["code"]).astype(np.int64)
    slot = (np.asarray(cols["ecode"]).astype(np.int64), t_slot)
    # column-major: each column's cells are taken from one contiguous plane (below)
    grid = np.full((len(aliases), *shape), np.nan)
    grid[code, slot[0], slot[1]] = cols["val"]
    busy = code == busy_code
    extra = {}
    for name, source in zip(BUSY_EXTRA, ("low_share", "max", "min")):
        plane = np.full(shape, np.nan)
        plane[slot[0][busy], slot[1][busy]] = np.asarray(cols[source])[busy]
        extra[name] = plane
    present = np.zeros(shape, dtype=bool)
    present[slot] = True
    e_idx, t_idx = np.nonzero(present)
    cells = grid[:, e_idx, t_idx]
    accel_columns = {  # noqa: F841 - scanned by DuckDB as a dict of NumPy arrays
        "entity": np.array(names, dtype=object)[e_idx] if names else np.array([], dtype=object),
        "t": times[t_idx],
        **{a: cells[i] for i, a in enumerate(aliases)},
        **{a: plane[e_idx, t_idx] for a, plane in extra.items()},
    }
    # NumPy rather than Arrow keeps pyarrow out of the agent process (live analysis runs there);
    # NaN marks an empty cell of the dense grid and becomes NULL. Materialized: rules query the
    # frame a dozen times, and a native table is cheaper to scan than a registered one.
    values = ", ".join(f"nullif({a}, 'NaN'::DOUBLE) AS {a}" for a in [*aliases, *extra])
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE aw_accel AS SELECT entity, t, {values} FROM accel_columns"
    )
    legacy = ", ".join(f"{new} AS {old}" for old, new in GPU_VIEW_COLUMNS.items())
    renamed = set(GPU_VIEW_COLUMNS.values())
    kept = ", ".join(a for a in [*aliases, *extra] if a not in renamed)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW aw_gpu AS SELECT entity, t, {kept}, {legacy} FROM aw_accel"
    )


def _time_slots(t: np.ndarray, k: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The distinct times ascending and each row's index among them. With the rows' integer
    buckets ``k`` (``t`` = ``k`` x the bucket, so both orders agree) in one pass over the
    buckets' range instead of sorting ~1 M times."""
    if k is None or not len(t):
        times = np.unique(t)
        return times, np.searchsorted(times, t)
    k = np.asarray(k, dtype=np.int64)
    k0 = int(k.min())
    used = np.zeros(int(k.max()) - k0 + 1, dtype=bool)
    used[k - k0] = True
    index = np.cumsum(used) - 1
    slot = index[k - k0]
    times = np.empty(int(index[-1]) + 1, dtype=np.float64)
    times[slot] = t
    return times, slot


def job_accelerators(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    plan: AcceleratorPlan,
    accels: Mapping[str, str],
    present: frozenset[str],
) -> tuple[tuple[str, ...], frozenset[str]]:
    """The accelerators the job used, and those of them whose use by the job is known."""
    marked = {
        r[0]: r[1]
        for r in con.execute(
            "SELECT entity, json_extract_string(attrs, '$.used_by_job') FROM entities "
            f"WHERE run_id = ? AND ({plan.predicate})",
            [run_id],
        ).fetchall()
    }
    holding = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT entity FROM aw_accel WHERE job_memory > 0 OR job_procs > 0"
        ).fetchall()
    }
    recorded = {
        s.name
        for s in plan.sources
        if s.columns.get("job_memory") in present or s.columns.get("job_procs") in present
    }
    return select_job_accelerators(accels, marked, holding, recorded)


def select_job_accelerators(
    accels: Mapping[str, str],
    marked: Mapping[str, object],
    holding: Iterable[str],
    job_use_recorded: Iterable[str],
) -> tuple[tuple[str, ...], frozenset[str]]:
    """The job's accelerators (``accels``: entity → source, in order) and the attributed ones.

    Per source: when it recorded the job's memory or processes on its devices (the sources in
    ``job_use_recorded``) or marked any device ``used_by_job``, the job's are those marked or
    holding job memory or processes (attributed); else all of that source's devices, as
    nothing says otherwise. Shared with the live hang watch, which applies it to one snapshot.
    """
    holding, recorded = set(holding), set(job_use_recorded)
    known = recorded | {accels[e] for e, v in marked.items() if v is not None and e in accels}
    job: list[str] = []
    attributed: set[str] = set()
    for entity, source in accels.items():
        if source not in known:
            job.append(entity)
        elif entity in holding or str(marked.get(entity)) in ("true", "True", "1"):
            job.append(entity)
            attributed.add(entity)
    return tuple(job), frozenset(attributed)


def metric_names(
    plan: AcceleratorPlan, sources: Sequence[str], columns: Sequence[str]
) -> list[str]:
    """The metrics filling ``columns`` for ``sources``, column by column, without repeats."""
    out: dict[str, None] = {}
    for column in columns:
        for name in sources:
            spec = plan.source(name)
            if spec is not None and column in spec.columns:
                out[spec.columns[column]] = None
    return list(out)
