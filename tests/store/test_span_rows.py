"""Schema 6: the spans' values divided by a power-of-two ``scale``, read back exactly
through ``sample_spans``; a schema-5 file read as it is, and upgraded in place."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np

from agent.model import Batch
from agent.store import SCHEMA_VERSION, Store, connect
from agent.store_span_rows import SPAN_ROWS_TABLE, V5_SPANS_TABLE, has_span_rows, span_columns
from tests.store.test_layout import T0


def to_v5_spans(con: duckdb.DuckDBPyConnection) -> None:
    """Turn a schema-6 file's spans into schema 5's table (what a version-5 writer left)."""
    con.execute(
        "CREATE TABLE aw_v5 AS SELECT series_id, tick, value FROM sample_spans; "
        f"DROP VIEW sample_spans; DROP TABLE {SPAN_ROWS_TABLE}; "
        "ALTER TABLE aw_v5 RENAME TO sample_spans"
    )
    if con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'sample_buckets' "
        "AND column_name = 'nulls'"
    ).fetchone() == (1,):
        con.execute("ALTER TABLE sample_buckets DROP COLUMN nulls")
    con.execute("UPDATE accelwatch_meta SET value = '5' WHERE key = 'schema_version'")


def _bits(values: np.ndarray) -> list[int]:
    return np.asarray(values, dtype=np.float64).view(np.int64).tolist()


def test_span_columns_give_back_every_value_bit_for_bit():
    rng = np.random.default_rng(7)
    kib = rng.integers(1, 2**30, 50) * 1024.0  # a driver's KiB counter, in bytes
    series = {
        1: kib,
        2: rng.normal(size=50),  # fractions
        3: np.r_[kib[:49], np.nan],  # a NaN
        4: np.r_[kib[:48], np.inf, -np.inf],
        5: np.zeros(50),
        6: np.r_[np.zeros(49), -0.0],
        7: np.r_[kib[:49], 2.0**60],  # beyond 2**53: not divided
        8: -kib,
        9: np.r_[np.zeros(25), kib[:25] * 8],  # zeros constrain nothing
        10: np.full(50, 3.0),
        11: np.r_[kib[:49], 5e-324],  # a subnormal: dividing it would lose it
        12: np.r_[kib[:40], rng.normal(size=10)],  # a fifth of fractions
    }
    sids = np.repeat(np.array(list(series), dtype=np.int32), 50)
    ticks = np.tile(np.arange(100, 150, dtype=np.int32), len(series))
    values = np.concatenate(list(series.values()))
    rows = span_columns(sids, ticks, values)
    assert _bits(rows["value"] * rows["scale"]) == _bits(values)
    assert rows["tick"].tolist() == ticks.tolist()
    scale = dict(zip(sids.tolist(), rows["scale"].tolist(), strict=True))
    assert scale[2] == scale[5] == scale[6] == scale[10] == scale[11] == scale[12] == 1
    # a few values that are not whole multiples (a NaN, infinities, one beyond 2**53) are
    # divided too, exactly
    assert scale[1] >= 1024 and scale[8] == scale[3] == scale[4] == scale[7] == scale[1]
    assert scale[9] >= 8 * 1024
    assert np.all(np.diff(rows["scale"][sids == 1]) == 0)  # one a series


def _tick(t: int) -> list[Batch]:
    counter = 1024.0 * (7 + 13 * t)
    return [
        Batch("nvml", T0 + t, ["gpu0", "gpu0", "gpu0"],
              ["gpu.nvlink.tx_bytes", "gpu.power.usage", "gpu.utilization"],
              [counter, 350.25 + t, float(t % 3)]),
    ]  # fmt: skip


def _samples(con) -> list[tuple]:
    return con.execute(
        "SELECT run_id, epoch_us(ts), source, entity, metric, value FROM samples ORDER BY ALL"
    ).fetchall()


def test_a_recording_stores_scaled_rows_and_reads_back_the_same_samples(tmp_path):
    path = tmp_path / "a.duckdb"
    store = Store(path)
    for t in range(30):
        store.write_ticks([("r", _tick(t))])
    store.close()
    ro = connect(path, read_only=True)
    try:
        assert has_span_rows(ro)
        got = _samples(ro)
        scales = dict(
            ro.execute(
                "SELECT s.metric, any_value(p.scale) FROM sample_span_rows p "
                "JOIN series s USING (series_id) GROUP BY 1"
            ).fetchall()
        )
    finally:
        ro.close()
    want = sorted(
        ("r", (T0 + t) * 10**6, "nvml", "gpu0", m, v)
        for t in range(30)
        for m, v in zip(_tick(t)[0].metrics, _tick(t)[0].values, strict=True)
    )
    assert got == want
    assert scales["gpu.nvlink.tx_bytes"] == 1024.0  # 7 + 13 t: odd and even, times 1,024
    assert scales["gpu.power.usage"] == 1.0


def test_a_version_5_file_is_read_as_it_is_then_upgraded_keeping_its_rows(tmp_path):
    path = tmp_path / "v5.duckdb"
    store = Store(path)
    for t in range(10):
        store.write_ticks([("old", _tick(t))])
    store.close()
    con = duckdb.connect(str(path))
    to_v5_spans(con)
    con.close()
    ro = connect(path, read_only=True)
    before = _samples(ro)
    assert not has_span_rows(ro) and len(before) == 30
    ro.close()
    store = Store(path)  # upgraded on open for writing
    for t in range(10, 20):
        store.write_ticks([("new", _tick(t))])
    store.close()
    ro = connect(path, read_only=True)
    try:
        version = ro.execute("SELECT value FROM accelwatch_meta WHERE key = 'schema_version'")
        assert version.fetchone() == (str(SCHEMA_VERSION),)
        after = _samples(ro)
        (kept,) = ro.execute(f"SELECT count(*) FROM {V5_SPANS_TABLE}").fetchone()
        (new,) = ro.execute(f"SELECT count(*) FROM {SPAN_ROWS_TABLE}").fetchone()
    finally:
        ro.close()
    assert [r for r in after if r[0] == "old"] == before
    assert len([r for r in after if r[0] == "new"]) == 30
    assert (kept, new) == (30, 30)


def test_a_new_file_has_no_schema_5_table(tmp_path: Path):
    path = tmp_path / "a.duckdb"
    Store(path).close()
    ro = connect(path, read_only=True)
    try:
        tables = {r[0] for r in ro.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        views = {r[0] for r in ro.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    finally:
        ro.close()
    assert SPAN_ROWS_TABLE in tables and V5_SPANS_TABLE not in tables
    assert "sample_spans" in views and "sample_spans" not in tables
