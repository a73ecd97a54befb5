"""The summary's utilization statistics, computed in NumPy from the spans' values."""

from __future__ import annotations

import math

import duckdb
import numpy as np

from agent.report_summary import busy_stats

LAYOUT = """
CREATE TABLE sample_spans (series_id INTEGER, tick INTEGER, value DOUBLE);
CREATE TABLE sample_moving (series_id INTEGER, ts TIMESTAMP, value DOUBLE);
CREATE TABLE sample_recent (series_id INTEGER, ts TIMESTAMP, value DOUBLE);
"""
#: series id -> entity: gpu1 has two utilization series (pooled), gpu2 one, gpu3 none stored
BUSY = [(1, "gpu1"), (2, "gpu1"), (3, "gpu2"), (4, "gpu3")]


def _file(order: np.ndarray, rows: list[tuple[int, float]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(LAYOUT)
    spans = [rows[i] for i in order[: len(order) - 50]]
    tail = [rows[i] for i in order[len(order) - 50 :]]
    con.executemany("INSERT INTO sample_spans VALUES (?, 0, ?)", spans)
    # a run's unmoved tail in the writer's table counts too; NULLs are not values
    con.executemany("INSERT INTO sample_recent VALUES (?, now()::TIMESTAMP, ?)", tail)
    con.execute("INSERT INTO sample_recent VALUES (3, now()::TIMESTAMP, NULL)")
    # another series (not a utilization) is not read
    con.execute("INSERT INTO sample_spans VALUES (9, 0, 1e9)")
    return con


def test_summary_percentiles_are_duckdbs_and_means_do_not_depend_on_row_order() -> None:
    rng = np.random.default_rng(7)
    rows = [(int(s), float(v)) for s, v in zip(rng.choice([1, 2, 3], 2_001), rng.random(2_001))]
    order = np.arange(len(rows))
    con = _file(order, rows)
    got = busy_stats(con, BUSY)
    expected = con.execute(
        """SELECT CASE WHEN series_id = 3 THEN 'gpu2' ELSE 'gpu1' END AS entity, avg(value),
                  quantile_cont(value, [0.5, 0.9, 0.99])
           FROM (SELECT series_id, value FROM sample_spans UNION ALL
                 SELECT series_id, value FROM sample_recent)
           WHERE series_id IN (1, 2, 3) GROUP BY GROUPING SETS ((entity), ())"""
    ).fetchall()
    for (e, mean, q), (e2, avg, q2) in zip(sorted(got, key=str), sorted(expected, key=str)):
        assert e == e2 and q == q2  # the percentiles to the bit
        assert math.isclose(mean, avg, rel_tol=1e-12)
    assert [e for e, _, _ in got] == ["gpu1", "gpu2", None]  # gpu3 has no values: no row
    shuffled = _file(rng.permutation(len(rows)), rows)
    assert busy_stats(shuffled, BUSY) == got  # the same numbers whatever the rows' order


def test_summary_without_utilization_values_has_an_empty_overall_row() -> None:
    con = duckdb.connect()
    con.execute(LAYOUT)
    assert busy_stats(con, BUSY) == [(None, None, None)]
    assert busy_stats(con, []) == [(None, None, None)]
