"""The counters' increases computed from the bucket arrays (agent/analysis/frame_arrays.py)
equal the SQL window the raw path runs over ``aw_agg`` (``frame.sql_counters``), bit for bit,
over the cases the SQL distinguishes: a series' first bucket, steady growth, a reset, a gap
of several buckets, NaN extremes, and rows out of order."""

from __future__ import annotations

import duckdb
import numpy as np

from agent.analysis.frame import sql_counters
from agent.analysis.frame_arrays import MergedRows, counter_rows


def _rows() -> MergedRows:
    rng = np.random.default_rng(7)
    sid, k, lo, hi = [], [], [], []
    for series in (3, 5, 9):  # 9 is a gauge: not a counter, left out
        total = 0.0
        for bucket in [*range(10, 40), *range(45, 60)]:  # a gap of 5 buckets
            start = total
            total += float(rng.uniform(0, 100))
            if series == 5 and bucket == 20:  # a reset: the bucket's min below the last max
                start, total = 1.5, 40.0
            sid.append(series)
            k.append(bucket)
            lo.append(start)
            hi.append(total)
    lo[7], hi[12] = float("nan"), float("nan")
    order = np.random.default_rng(1).permutation(len(sid))  # merged rows come in any order
    n = len(sid)
    columns = {
        "series_id": np.asarray(sid, np.int32)[order],
        "k": np.asarray(k, np.int64)[order],
        "n": np.full(n, 30, np.int64),
        "avg": np.zeros(n),
        "min": np.asarray(lo)[order],
        "max": np.asarray(hi)[order],
        "low_share": np.zeros(n),
    }
    labels = {3: ("gpu0", "gpu.energy"), 5: ("gpu1", "gpu.energy"), 9: ("gpu0", "gpu.power")}
    return MergedRows(columns, labels)


def test_counter_increases_from_the_arrays_equal_the_sql_window_over_aw_agg():
    rows = _rows()
    got, where = counter_rows(rows, ["gpu.energy"], 30.0)
    con = duckdb.connect()
    merged = dict(rows.columns)  # noqa: F841 - scanned by DuckDB
    metric_of = {s: m for s, (_, m) in rows.labels.items()}
    names = {  # noqa: F841 - scanned by DuckDB
        "series_id": np.array(list(metric_of), np.int32),
        "metric": np.array(list(metric_of.values()), dtype=object),
    }
    con.execute("CREATE TEMP TABLE aw_agg AS SELECT * FROM merged JOIN names USING (series_id)")
    sql_counters(con, "series_id", "'gpu.energy'", 30.0)
    expected = con.execute(
        "SELECT series_id, k, inc, val FROM aw_counters ORDER BY 1, 2"
    ).fetchall()
    con.execute("CREATE TEMP TABLE from_arrays AS SELECT * FROM got")  # as the frame loads it
    arrays = con.execute("SELECT series_id, k, inc, val FROM from_arrays ORDER BY 1, 2").fetchall()
    assert len(arrays) == 2 * 45 and {r[0] for r in arrays} == {3, 5}
    assert arrays == expected
    assert None in {r[2] for r in arrays}  # the NaN bucket's increase, NULL in both
    assert (np.asarray(rows.columns["series_id"])[where] == got["series_id"]).all()


def test_accel_pivot_places_rows_by_integer_bucket_as_sorting_their_times_would() -> None:
    import numpy as np

    from agent.analysis.frame_accel import _time_slots

    rng = np.random.default_rng(3)
    k = rng.choice(np.arange(5_000, 5_400), 3_000)  # gaps and repeats, any order
    t = k * 30.0
    sorted_times, sorted_slots = _time_slots(t, None)
    times, slots = _time_slots(t, k)
    assert np.array_equal(times, sorted_times) and np.array_equal(slots, sorted_slots)
    assert np.array_equal(times[slots], t)
