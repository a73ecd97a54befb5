"""Schema 5: per-bucket aggregates of the analysed series, written when a span is moved.

The post-run report's one grouped scan (``aw_agg``) reduces every value of the ~340 analysed
series of a run to a count, sum, extremes and idle share per (series, bucket): at 24 h, 29 M
values into 980 k groups, most of the report's time. The writer already holds each span's
values in NumPy, sorted by series, when it moves them (:class:`agent.store_spans.Compactor`), so
it aggregates them there, in the move's transaction, into ``sample_buckets`` (a bucket of equal
values into ``sample_buckets_flat``, as that value): readers see each
value once, either in a bucket or (not moved yet) raw, and ``kill -9`` mid-move loses nothing.

Buckets are :data:`BUCKET_BASE_S` wide, aligned on the epoch as the frame's are
(``epoch_us(ts) // bucket_us``), so a frame bucket that is a multiple of the base is a whole
number of base buckets (``floor(floor(x / b) / m) = floor(x / (b m))``). A span boundary may cut
a base bucket in two: both parts are stored and merged by the reader, like the unmoved tail.

Which series are bucketed is decided once per series, at its first move, and kept in
``bucket_series``: a series has either every moved value in buckets or none (series moved
before the file had buckets, or that the analysis does not read, are read raw). The base width
and the idle threshold the buckets were counted with are kept in ``accelwatch_meta``; a reader
whose frame or threshold differs reads the raw values instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.analysed import analysed_series_where
from agent.tables import has_table

#: Width of a stored bucket. The post-run report picks its bucket among 1, 2, 5, 10, 15, 30,
#: 60 ... 600 s (:data:`agent.analysis.engine.NICE_BUCKETS_S`) to keep a run under 3,000:
#: 30 s from 12.5 h to 25 h, wider (multiples of 30) above; shorter runs are read raw (at most
#: half a day's values). A 15 s or 5 s base would serve shorter runs too, at 2x or 6x the rows.
BUCKET_BASE_S = 30
BUCKET_BASE_US = BUCKET_BASE_S * 1_000_000

#: Version 5, the tables (the meta rows are added by :func:`apply_v5_buckets`).
SCHEMA_V5_BUCKETS = """
CREATE TABLE IF NOT EXISTS sample_buckets (
    series_id INTEGER, bucket INTEGER, n INTEGER, total DOUBLE, low INTEGER,
    min DOUBLE, max DOUBLE);
CREATE TABLE IF NOT EXISTS sample_buckets_flat (
    series_id INTEGER, bucket INTEGER, n INTEGER, value DOUBLE);
CREATE TABLE IF NOT EXISTS bucket_series (series_id INTEGER, bucketed BOOLEAN);
"""

#: The tables schema 5 adds.
BUCKET_TABLES = ("sample_buckets", "sample_buckets_flat", "bucket_series")
#: Schema 6: how many of a bucket's samples are NULL (counted in ``n``, as ``count(*)``
#: counts them, and skipped by its sum, min and max, as SQL skips them; ``avg`` is
#: ``total / (n - nulls)``). 0 in an upgraded file's older buckets.
SCHEMA_V6_BUCKET_NULLS = (
    "ALTER TABLE sample_buckets ADD COLUMN IF NOT EXISTS nulls INTEGER DEFAULT 0;"
)


def has_buckets(con: Any) -> bool:
    """Whether a database has per-bucket aggregates (schema 5)."""
    return has_table(con, "sample_buckets_flat")


def apply_v5_buckets(con: Any, *, had_spans: bool) -> None:
    """Add the bucket tables (in the caller's transaction). Series already in spans (a
    version-4 file) are marked unbucketed: their moved values have no buckets, so they are
    read raw; the rest (a version-3 file's, still to move) get buckets when moved."""
    con.execute(SCHEMA_V5_BUCKETS)
    con.execute(
        "INSERT OR REPLACE INTO accelwatch_meta VALUES ('bucket_width_s', ?), "
        "('bucket_low_below', ?)",
        [str(BUCKET_BASE_S), repr(idle_threshold())],
    )
    if had_spans:
        con.execute(
            "INSERT INTO bucket_series SELECT DISTINCT series_id, false FROM sample_spans "
            "WHERE series_id NOT IN (SELECT series_id FROM bucket_series)"
        )


def has_bucket_nulls(con: Any) -> bool:
    """Whether the file's buckets count their NULL samples (schema 6)."""
    rows = con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'sample_buckets' "
        "AND column_name = 'nulls' AND database_name = current_database()"
    ).fetchall()
    return bool(rows and rows[0][0])


def bucket_layout(con: Any) -> tuple[float, float] | None:
    """(base width s, idle threshold) the file's buckets were counted with, or None."""
    if not has_buckets(con):
        return None
    rows = dict(
        con.execute(
            "SELECT key, value FROM accelwatch_meta "
            "WHERE key IN ('bucket_width_s', 'bucket_low_below')"
        ).fetchall()
    )
    try:
        return float(rows["bucket_width_s"]), float(rows["bucket_low_below"])
    except (KeyError, ValueError):
        return None


def idle_threshold() -> float:
    """The value below which a sample counts as idle (``low_share``), the frame's (imported
    late: the analysis package reads the store)."""
    from agent.analysis.thresholds import IDLE_SAMPLE

    return IDLE_SAMPLE


def _analysed_where() -> str:
    """SQL over ``series`` columns selecting what the analysis frame aggregates
    (:mod:`agent.analysed`, shared with the frame)."""
    return analysed_series_where()


class BucketChoice:
    """Which series of a move get buckets: decided once per series, kept in
    ``bucket_series``, cached here (forgotten with a rolled-back move)."""

    def __init__(self) -> None:
        self._known: dict[int, bool] = {}
        self._loaded = False
        self.enabled = False
        #: (width in µs, idle threshold) recorded in the file: every bucket of a file is
        #: counted alike, whatever this writer's constants are.
        self.layout = (BUCKET_BASE_US, 0.0)

    def reset(self) -> None:
        self._known.clear()
        self._loaded = False

    def _load(self, con: Any) -> None:
        if self._loaded:
            return
        layout = bucket_layout(con)
        self.enabled = layout is not None
        if layout is not None:
            self.layout = (round(layout[0] * 1e6), layout[1])
            rows = con.execute("SELECT series_id, bucketed FROM bucket_series").fetchall()
            self._known = {int(s): bool(b) for s, b in rows}
        self._loaded = True

    def bucketed(self, cursor: Any, ids: np.ndarray, *, new_ones: bool = True) -> np.ndarray:
        """The ids among ``ids`` (unique, ascending) whose values get buckets; series seen
        for the first time are decided and recorded on ``cursor`` (the move's transaction),
        in one statement: the new ids go to DuckDB as a column, matched against ``series``
        by a hash semi-join (an ``IN`` list of constants is planned and tested per value:
        ~20 ms for a run's 1,500 series) and the decisions come back by ``RETURNING``.
        ``new_ones=False`` records every new series unbucketed (a file too short for any
        frame to read buckets: :func:`agent.store_rewrite.buckets_could_serve`)."""
        self._load(cursor)
        if not self.enabled or not len(ids):
            return np.empty(0, dtype=np.int32)
        known = self._known
        new = [s for s in ids.tolist() if s not in known]
        if new:
            decide = {"series_id": np.array(new, dtype=np.int32)}  # noqa: F841 - DuckDB reads it
            test = (
                f"d.series_id IN (SELECT series_id FROM series WHERE {_analysed_where()})"
                if new_ones
                else "false"
            )
            rows = cursor.execute(
                f"INSERT INTO bucket_series SELECT d.series_id, {test} FROM decide d "
                "RETURNING series_id, bucketed"
            ).fetchall()
            known.update((int(s), bool(b)) for s, b in rows)
        return np.array([s for s in ids.tolist() if known[s]], dtype=np.int32)


def aggregate_buckets(
    sids: np.ndarray,
    us: np.ndarray,
    values: np.ndarray,
    bucketed: np.ndarray,
    layout: tuple[int, float],
) -> dict[str, np.ndarray] | None:
    """The ``sample_buckets`` rows of a chunk's rows in span order (each series' rows together,
    its times ascending or descending), for the series in ``bucketed``, ``layout`` being the
    file's (width µs, idle threshold); None if none."""
    if not len(bucketed):
        return None
    width_us, low_below = layout
    keep = np.isin(sids, bucketed)
    if not keep.any():
        return None
    s, v = sids[keep], values[keep]
    b = us[keep] // width_us
    # A (series, bucket) group is one run of rows: a series' rows are contiguous, and its
    # buckets move one way along them.
    starts = np.flatnonzero(np.r_[True, (s[1:] != s[:-1]) | (b[1:] != b[:-1])])
    # A NaN is a NULL sample (DuckDB stores NumPy's NaN as NULL): counted in ``n`` and
    # ``nulls``, skipped by the sum, min and max as SQL skips it.
    missing = np.isnan(v)
    n = np.diff(np.r_[starts, len(s)])
    nulls = np.add.reduceat(missing.astype(np.int32), starts)
    total = np.add.reduceat(np.where(missing, 0.0, v), starts)
    total[nulls == n] = np.nan  # all NULL: sum() is NULL
    return {
        "series_id": s[starts].astype(np.int32),
        "bucket": b[starts].astype(np.int32),
        "n": n.astype(np.int32),
        "total": total,
        "low": np.add.reduceat((v < low_below).astype(np.int32), starts),
        "min": np.fmin.reduceat(v, starts),
        "max": np.fmax.reduceat(v, starts),
        "nulls": nulls,
    }


def insert_buckets(
    cursor: Any, rows: dict[str, np.ndarray] | None, into: str = ""
) -> tuple[int, int]:
    """Append a chunk's buckets (in the move's transaction). A bucket whose values are all
    equal (most of them: limits, flags, idle counters, a steady clock) goes to
    ``sample_buckets_flat`` as that value: its sum is ``n * value`` and its idle count ``n`` or
    0, and three doubles and a count less are about a quarter of the buckets' bytes.
    ``into`` qualifies the tables (``aw_compact.main.``: a fresh file at close). Returns the
    rows added to each table (``sample_buckets``, ``sample_buckets_flat``)."""
    if rows is None:
        return 0, 0
    # NaN is never equal, and a bucket with a NULL sample keeps its columns
    flat = (rows["min"] == rows["max"]) & (rows["nulls"] == 0)
    flat_rows = {  # noqa: F841 - read by DuckDB's replacement scan
        "series_id": rows["series_id"][flat],
        "bucket": rows["bucket"][flat],
        "n": rows["n"][flat],
        "value": rows["min"][flat],
    }
    bucket_rows = {c: v[~flat] for c, v in rows.items()}  # noqa: F841 - the same
    cursor.execute(
        f"INSERT INTO {into}sample_buckets SELECT series_id, bucket, n, total, low, min, max, "
        "nulls FROM bucket_rows"
    )
    cursor.execute(
        f"INSERT INTO {into}sample_buckets_flat SELECT series_id, bucket, n, value FROM flat_rows"
    )
    flat_n = int(np.count_nonzero(flat))
    return len(flat) - flat_n, flat_n
