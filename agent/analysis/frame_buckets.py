"""``aw_agg``'s aggregation from the writer's stored buckets (schema 5), where they serve.

A whole run whose frame bucket is a multiple of the stored base width reads, per analysed
series, the base buckets (``sample_buckets`` and ``sample_buckets_flat``: 30 values a row at
1 Hz) merged up to the frame's
width, plus the raw values not in buckets: the writer's tables not moved yet, and the spans of
series moved without buckets (an older file's, appended to). Both sides are reduced to the
same mergeable parts (count, sum, idle count, min, max) and merged by (series, bucket), so a
bucket cut by a span boundary or by the unmoved tail counts each value once. Means differ from
a raw scan's only by the order of summation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from agent.analysis.thresholds import IDLE_SAMPLE
from agent.store_buckets import bucket_layout, has_bucket_nulls
from agent.store_span_rows import stored_values


def _ids(ids: Sequence[int]) -> str:
    """A filter on ``series_id`` that also lets the scan skip row groups by min/max."""
    listed = ", ".join(map(str, ids))
    return f"series_id BETWEEN {min(ids)} AND {max(ids)} AND series_id IN ({listed})"


#: Above this many (series, bucket) slots the merge sorts instead of scattering into a dense grid.
DENSE_SLOTS = 8_000_000


#: Series merged at a time: all ~340 analysed series of an 8-GPU run in one batch (the frame
#: keeps every batch's columns anyway, for its counters and accelerator pivot:
#: :mod:`agent.analysis.frame_arrays`); ~1 M stored rows at 24 h, ~55 MB of columns.
BATCH_SERIES = 512


def stored_bucket_batches(
    con: Any, run_id: str, where: str, bucket_s: float, times: Sequence[str]
) -> Iterator[dict[str, np.ndarray]] | None:
    """``aw_agg``'s aggregate, ``(series_id, k, n, avg, min, max, low_share)`` per frame bucket
    ``k`` (``epoch_us(ts) // bucket_us``) of the run's series matching ``where`` (SQL over
    ``series``), from the stored buckets and the raw values outside them, as NumPy columns,
    a batch of series at a time; None when the buckets cannot serve: none in the file, a
    time-bounded window, a width that is no multiple of theirs, another idle threshold, or no
    series bucketed.

    The merge is NumPy's: a frame bucket is mostly one stored row, so DuckDB's hash
    aggregation of ~1 M rows into ~1 M groups (the most of this read) is replaced by taking
    those rows as they are and merging only the few that share a bucket."""
    if times:
        return None
    layout = bucket_layout(con)
    if layout is None:
        return None
    width_s, low_below = layout
    base_us, bucket_us = round(width_s * 1e6), round(bucket_s * 1e6)
    if low_below != IDLE_SAMPLE or base_us <= 0 or bucket_us % base_us:
        return None
    rows = con.execute(
        f"""SELECT s.series_id, coalesce(b.bucketed, false) FROM series s
            LEFT JOIN bucket_series b USING (series_id)
            WHERE s.run_id = ? AND ({where}) ORDER BY 1""",
        [run_id],
    ).fetchall()
    if not any(b for _, b in rows):
        return None
    picked = [(int(s), bool(b)) for s, b in rows]
    batches = [picked[i : i + BATCH_SERIES] for i in range(0, len(picked), BATCH_SERIES)]
    nulls = "nulls" if has_bucket_nulls(con) else "0"  # a schema-5 file's buckets: none
    return (_batch(con, batch, bucket_us, bucket_us // base_us, nulls) for batch in batches)


def _batch(
    con: Any, series: list[tuple[int, bool]], bucket_us: int, per_bucket: int, nulls: str
) -> dict[str, np.ndarray]:
    bucketed = [s for s, b in series if b]
    unbucketed = [s for s, b in series if not b]
    picked = _ids([s for s, _ in series])
    raw = [
        f"""SELECT series_id, epoch_us(ts) // {bucket_us} AS k, value FROM {table}
            WHERE {picked}"""
        for table in ("sample_moving", "sample_recent")
    ]
    if unbucketed:
        raw.append(f"""SELECT p.series_id, t.k, p.value FROM sample_spans p
            JOIN (SELECT tick, epoch_us(ts) // {bucket_us} AS k FROM sample_ticks) t USING (tick)
            WHERE {_ids(unbucketed).replace("series_id", "p.series_id")}""")
    loose = con.execute(
        f"""SELECT series_id, k, count(*) AS n, sum(value) AS total,
                   count_if(value < {IDLE_SAMPLE!r}) AS low, min(value) AS min,
                   max(value) AS max, count(*) - count(value) AS nulls
            FROM ({" UNION ALL ".join(raw)}) GROUP BY series_id, k"""
    ).fetchnumpy()
    if not bucketed:
        return merge_buckets(loose)
    ids = _ids(bucketed)
    stored = con.execute(
        f"""SELECT series_id, bucket // {per_bucket} AS k, n, total, low, min, max,
                   {nulls} AS nulls
            FROM sample_buckets WHERE {ids}
            UNION ALL
            SELECT series_id, bucket // {per_bucket}, n, n * value,
                   CASE WHEN value < {IDLE_SAMPLE!r} THEN n ELSE 0 END, value, value, 0
            FROM sample_buckets_flat WHERE {ids}"""
    ).fetchnumpy()
    if len(loose["n"]):
        stored = {c: np.concatenate([_filled(stored[c]), _filled(loose[c])]) for c in stored}
    return merge_buckets(stored)


def merge_buckets(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of (series_id, k, n, total, low, min, max, nulls) merged by (series_id, k). Most slots
    hold one row (a bucket inside one span): those are taken as they are; only the rest (cut
    by a span boundary, or partly unmoved) are merged."""
    sid, k = np.asarray(parts["series_id"]), np.asarray(parts["k"])
    n, low, nulls = (np.asarray(parts[c]) for c in ("n", "low", "nulls"))
    total, lo, hi = (_filled(parts[c]).astype(np.float64) for c in ("total", "min", "max"))
    if len(sid):
        # slot = (series' rank, bucket - first bucket): ~1 M slots at 24 h, mostly used
        present = np.flatnonzero(np.bincount(sid))
        rank = np.zeros(int(present[-1]) + 1, dtype=np.int64)
        rank[present] = np.arange(len(present))
        k0 = int(k.min())
        width = int(k.max()) - k0 + 1
        key = rank[sid] * width + (k.astype(np.int64) - k0)
        if len(present) * width <= DENSE_SLOTS:
            counts = np.bincount(key)
        else:
            _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
            key = inverse
        shared = np.flatnonzero(counts[key] > 1)
        if len(shared):
            slots, slot = np.unique(key[shared], return_inverse=True)
            first = np.zeros(len(slots), dtype=np.int64)
            first[slot] = shared  # any row of the slot gives its series and bucket
            # NaN is a NULL (an all-NULL bucket's sum, min and max): skipped, as SQL skips it
            m_lo, m_hi = np.full(len(slots), np.nan), np.full(len(slots), np.nan)
            np.fmin.at(m_lo, slot, lo[shared])
            np.fmax.at(m_hi, slot, hi[shared])
            alone = np.flatnonzero(counts[key] == 1)
            sid = np.concatenate([sid[alone], sid[first]])
            k = np.concatenate([k[alone], k[first]])
            n = np.concatenate([n[alone], np.bincount(slot, weights=n[shared]).astype(np.int64)])
            part = total[shared]
            summed = np.bincount(slot, weights=np.where(np.isnan(part), 0.0, part))
            total = np.concatenate([total[alone], summed])
            low = np.concatenate([low[alone], np.bincount(slot, weights=low[shared])])
            nulls = np.concatenate([nulls[alone], np.bincount(slot, weights=nulls[shared])])
            lo = np.concatenate([lo[alone], m_lo])
            hi = np.concatenate([hi[alone], m_hi])
    return {
        "series_id": np.asarray(sid, dtype=np.int32),
        "k": np.asarray(k, dtype=np.int64),
        "n": np.asarray(n, dtype=np.int64),
        "avg": _avg(total, n - nulls),
        "min": lo,
        "max": hi,
        "low_share": low / n,
    }


def _avg(total: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """``avg(value)``: the sum over the non-NULL samples, NaN (NULL) where there is none."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, total / np.maximum(counted, 1), np.nan)


def _filled(column: object) -> np.ndarray:
    """A column from ``fetchnumpy`` with its NULLs as NaN (a masked array's mask would
    otherwise be dropped, leaving the value under it)."""
    return stored_values(column) if np.ma.isMaskedArray(column) else np.asarray(column)
