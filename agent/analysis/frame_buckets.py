"""``aw_agg``'s aggregation from the writer's stored buckets (schema 5), where they serve.

A whole run whose frame bucket is a multiple of the stored base width reads, per analysed
series, the base buckets (``sample_buckets``: 30 values a row at 1 Hz) merged up to the frame's
width, plus the raw values not in buckets: the writer's tables not moved yet, and the spans of
series moved without buckets (an older file's, appended to). Both sides are reduced to the
same mergeable parts (count, sum, idle count, min, max) and merged by (series, bucket), so a
bucket cut by a span boundary or by the unmoved tail counts each value once. Means differ from
a raw scan's only by the order of summation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.analysis.thresholds import IDLE_SAMPLE
from agent.store_buckets import bucket_layout


def _ids(ids: Sequence[int]) -> str:
    """A filter on ``series_id`` that also lets the scan skip row groups by min/max."""
    listed = ", ".join(map(str, ids))
    return f"series_id BETWEEN {min(ids)} AND {max(ids)} AND series_id IN ({listed})"


def stored_bucket_aggregate(
    con: Any, run_id: str, where: str, bucket_s: float, times: Sequence[str]
) -> str | None:
    """SQL of ``(series_id, k, n, avg, min, max, low_share)`` per frame bucket ``k``
    (``epoch_us(ts) // $bucket_us``) of the run's series matching ``where`` (SQL over
    ``series``), read from the stored buckets; None when they cannot serve: no buckets in the
    file, a time-bounded window, a width that is no multiple of theirs, another idle threshold,
    or no series bucketed."""
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
    bucketed = [int(s) for s, b in rows if b]
    if not bucketed:
        return None
    unbucketed = [int(s) for s, b in rows if not b]
    picked = _ids([int(s) for s, _ in rows])
    raw = [
        f"""SELECT series_id, epoch_us(ts) // $bucket_us AS k, value FROM {table}
            WHERE {picked}"""
        for table in ("sample_moving", "sample_recent")
    ]
    if unbucketed:
        raw.append(f"""SELECT p.series_id, t.k, p.value FROM sample_spans p
            JOIN (SELECT tick, epoch_us(ts) // $bucket_us AS k FROM sample_ticks) t USING (tick)
            WHERE {_ids(unbucketed).replace("series_id", "p.series_id")}""")
    raw_rows = " UNION ALL ".join(raw)
    return f"""
        SELECT series_id, k, sum(n)::BIGINT AS n, sum(total) / sum(n) AS avg,
               min(min) AS min, max(max) AS max, sum(low) / sum(n) AS low_share
        FROM (
            SELECT series_id, bucket // {bucket_us // base_us} AS k, n, total, low, min, max
            FROM sample_buckets WHERE {_ids(bucketed)}
            UNION ALL
            SELECT series_id, k, count(*), sum(value), count_if(value < {IDLE_SAMPLE!r}),
                   min(value), max(value)
            FROM ({raw_rows}) GROUP BY series_id, k)
        GROUP BY series_id, k"""
