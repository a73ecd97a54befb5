"""The frame's counters and accelerator pivot straight from the merged bucket arrays.

When ``aw_agg`` comes from the writer's stored buckets (:mod:`agent.analysis.frame_buckets`)
its rows are already NumPy columns in this process. The SQL path then reads them back twice:
a window function over ``aw_agg`` for the counters' increases (``aw_counters``), and
``aw_rated`` (``aw_agg`` joined with those) for the accelerator pivot, ~0.9 M rows at 24 h.
Here both are computed from the arrays themselves, with the same arithmetic in the same
order, so the frames are equal to the SQL path's bit for bit (tests compare them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import duckdb
import numpy as np

from agent.analysis.frame_accel import AcceleratorPlan, column_codes
from agent.analysis.frame_sql import q


@dataclass(frozen=True)
class MergedRows:
    """``aw_agg``'s rows as columns (``series_id, k, n, avg, min, max, low_share``) and the
    labels of their series (``series_id → (entity, metric)``)."""

    columns: Mapping[str, np.ndarray]
    labels: Mapping[int, tuple[str, str]]

    def present(self) -> list[int]:
        """The ids of the series with rows, ascending (a count per id: no sort of ~1 M)."""
        sid = np.asarray(self.columns.get("series_id", np.empty(0, np.int32)))
        return np.flatnonzero(np.bincount(sid)).tolist() if len(sid) else []


def concatenated(batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The batches of :func:`agent.analysis.frame_buckets.stored_bucket_batches` as one set
    of columns (in batch order, as inserting them batch by batch would give)."""
    parts = list(batches)
    if len(parts) <= 1:
        return dict(parts[0]) if parts else {}
    return {c: np.concatenate([np.asarray(p[c]) for p in parts]) for c in parts[0]}


def series_lookup(labels: Mapping[int, tuple[str, str]], wanted: Mapping[str, int]) -> np.ndarray:
    """An array indexed by series id: the code ``wanted`` gives its metric, -1 for the rest."""
    size = max(labels, default=0) + 1
    out = np.full(size, -1, dtype=np.int64)
    for sid, (_, metric) in labels.items():
        code = wanted.get(metric)
        if code is not None:
            out[sid] = code
    return out


def counter_rows(
    rows: MergedRows, counters: Iterable[str], bucket_s: float
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``aw_counters``' columns (``series_id, k, inc, val``) of the counter series, and where
    each of those rows sits in ``rows.columns``.

    The SQL it replaces (see :func:`agent.analysis.frame.build_frames`): per series in bucket
    order, ``inc`` is ``max - min`` for the first bucket, ``max - prev_max`` when ``min >=
    prev_max``, else ``greatest(max - prev_max, 0) + min`` (a reset); ``val`` is ``inc /
    (bucket_s * (k - prev_k))`` (``* 1`` for the first). A NaN here is a NULL there, with
    NULL's rules (a NULL rate leaves ``aw_rated`` the bucket's mean)."""
    cols = rows.columns
    is_counter = series_lookup(rows.labels, dict.fromkeys(counters, 1)) == 1
    sid = np.asarray(cols["series_id"]).astype(np.int64)
    where = np.flatnonzero(is_counter[sid]) if len(sid) else np.empty(0, dtype=np.int64)
    k = np.asarray(cols["k"]).astype(np.int64)[where]
    s = sid[where]
    order = np.lexsort((k, s))
    where, s, k = where[order], s[order], k[order]
    lo = np.asarray(cols["min"], dtype=np.float64)[where]
    hi = np.asarray(cols["max"], dtype=np.float64)[where]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    prev_max = np.zeros_like(hi)
    prev_max[1:] = hi[:-1]
    prev_k = np.zeros_like(k)
    prev_k[1:] = k[:-1]
    steps = np.where(first, 1, k - prev_k)
    with np.errstate(invalid="ignore"):
        # NaN is NULL here: DuckDB reads a NaN of a NumPy column as NULL, so aw_agg (which
        # the SQL window reads) holds NULL wherever these arrays hold NaN
        no_prev = first | np.isnan(prev_max)
        rise = hi - prev_max
        inc = np.where(
            no_prev,
            hi - lo,  # CASE WHEN prev_max IS NULL THEN max - min
            np.where(
                lo >= prev_max,  # NULL (NaN) on either side is not true
                rise,
                np.where(np.isnan(rise), 0.0, np.maximum(rise, 0.0)) + lo,  # greatest skips NULL
            ),
        )
        val = inc / (float(bucket_s) * steps)
    columns: dict[str, np.ndarray] = {
        "series_id": s.astype(np.int32),
        "k": k,
        "inc": inc,
        "val": val,
    }
    return columns, where


def accel_rows(
    rows: MergedRows,
    plan: AcceleratorPlan,
    accels: Mapping[str, str],
    counters: tuple[Mapping[str, np.ndarray], np.ndarray],
    bucket_s: float,
) -> dict[str, np.ndarray]:
    """The long rows :func:`agent.analysis.frame_accel.load_accel_frame` pivots, as the SQL
    over ``aw_rated`` would select them: the rows of the accelerators (``accels``, in name
    order) and their column metrics, ``val`` the counter rate or else the mean."""
    cols = rows.columns
    names = {e: i for i, e in enumerate(accels)}
    codes = column_codes(plan)
    size = max(rows.labels, default=0) + 1
    ecode_of, code_of = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
    for series_id, (entity, metric) in rows.labels.items():
        if entity in names and metric in codes:
            ecode_of[series_id], code_of[series_id] = names[entity], codes[metric]
    sid = np.asarray(cols["series_id"]).astype(np.int64)
    keep = np.flatnonzero(code_of[sid] >= 0) if len(sid) else np.empty(0, dtype=np.int64)
    val = np.asarray(cols["avg"], dtype=np.float64)[keep]
    rated, where = counters  # counter rows: where they sit in cols, and their rates
    at = np.searchsorted(keep, where)  # keep is ascending: where those rows sit in val
    hit = at < len(keep)
    hit[hit] = keep[at[hit]] == where[hit]
    rate = np.asarray(rated["val"])[hit]
    val[at[hit]] = np.where(np.isnan(rate), val[at[hit]], rate)  # coalesce(c.val, a.avg)
    k = np.asarray(cols["k"]).astype(np.int64)[keep]
    return {
        "ecode": ecode_of[sid[keep]],
        "code": code_of[sid[keep]],
        "t": k * float(bucket_s),
        "k": k,
        "val": val,
        "low_share": np.asarray(cols["low_share"], dtype=np.float64)[keep],
        "max": np.asarray(cols["max"], dtype=np.float64)[keep],
        "min": np.asarray(cols["min"], dtype=np.float64)[keep],
    }


def accelerators(
    con: duckdb.DuckDBPyConnection, rows: MergedRows, plan: AcceleratorPlan
) -> dict[str, str]:
    """The accelerators with rows (entity → source, in name order), as
    :func:`agent.analysis.frame_accel.build_accel_frame` finds them in ``aw_agg``: entities
    with a row of an accelerator metric whose (source, entity) the plan's predicate accepts."""
    source_of = dict(plan.metric_sources())
    labelled = [rows.labels[sid] for sid in rows.present()]
    pairs = sorted({(source_of[m], e) for e, m in labelled if m in source_of})
    if not pairs:
        return {}
    listed = ", ".join(f"({q(s)}, {q(e)})" for s, e in pairs)
    found = con.execute(f"""
        SELECT entity, source FROM (VALUES {listed}) e(source, entity) WHERE {plan.predicate}
        ORDER BY length(entity), entity, source""").fetchall()
    return dict(found)
