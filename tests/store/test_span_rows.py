"""Schema 6: the spans' values divided by a power-of-two ``scale``, read back exactly
through ``sample_spans``; a NULL sample kept NULL when moved; a schema-5 file read as it is,
and upgraded in place (also when the upgrade fails halfway, or is followed by a move in
place and a copy of the file)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pytest

from agent import store_rewrite, store_span_rows
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


def as_version_5(path: Path) -> None:
    """The closed file ``path`` as a version-5 writer would have left it."""
    con = duckdb.connect(str(path))
    try:
        to_v5_spans(con)
    finally:
        con.close()


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


def record(
    path: Path, run: str, ticks: range, tick: Callable[[int], list[Batch]] | None = None
) -> None:
    """Record ``ticks`` of run ``run`` (``tick``: the batches of one, :func:`_tick` by
    default) into ``path`` and close it."""
    store = Store(path)
    for t in ticks:
        store.write_ticks([(run, (tick or _tick)(t))])
    store.close()


def v5_file(path: Path) -> list[tuple]:
    """A schema-5 file of run ``old`` (ten ticks); its samples."""
    record(path, "old", range(10))
    as_version_5(path)
    return read_samples(path)


def read_samples(path: Path) -> list[tuple]:
    ro = connect(path, read_only=True)
    try:
        return _samples(ro)
    finally:
        ro.close()


def _with_new_run(path: Path, before: list[tuple]) -> None:
    """Run ``new`` (ten ticks) appended to an upgraded file leaves ``old`` as it was."""
    after = read_samples(path)
    assert [r for r in after if r[0] == "old"] == before
    assert len([r for r in after if r[0] == "new"]) == 30


def test_a_recording_stores_scaled_rows_and_reads_back_the_same_samples(tmp_path):
    path = tmp_path / "a.duckdb"
    record(path, "r", range(30))
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
    before = v5_file(path)
    ro = connect(path, read_only=True)
    assert not has_span_rows(ro) and len(before) == 30
    ro.close()
    record(path, "new", range(10, 20))  # upgraded on open for writing
    ro = connect(path, read_only=True)
    try:
        version = ro.execute("SELECT value FROM accelwatch_meta WHERE key = 'schema_version'")
        assert version.fetchone() == (str(SCHEMA_VERSION),)
        (kept,) = ro.execute(f"SELECT count(*) FROM {V5_SPANS_TABLE}").fetchone()
        (new,) = ro.execute(f"SELECT count(*) FROM {SPAN_ROWS_TABLE}").fetchone()
    finally:
        ro.close()
    _with_new_run(path, before)
    assert (kept, new) == (30, 30)


def test_an_upgrade_that_fails_halfway_leaves_the_schema_5_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "v5.duckdb"
    before = v5_file(path)

    def fail(*, with_v5: bool) -> str:  # after the rename of sample_spans
        raise RuntimeError("fails halfway")

    monkeypatch.setattr(store_span_rows, "spans_view", fail)
    with pytest.raises(RuntimeError, match="halfway"):
        Store(path)
    monkeypatch.undo()
    ro = connect(path, read_only=True)
    try:
        assert not has_span_rows(ro) and _samples(ro) == before
    finally:
        ro.close()
    record(path, "new", range(10, 20))  # upgraded now
    _with_new_run(path, before)


def test_an_upgraded_file_moved_in_place_and_copied_keeps_both_tables(tmp_path, monkeypatch):
    path = tmp_path / "v5.duckdb"
    before = v5_file(path)
    store = Store(path)
    for t in range(10, 20):
        store.write_ticks([("new", _tick(t))])
    store.compact(finish=True)  # the Compactor's move, not the sort at close
    monkeypatch.setattr(store_rewrite, "REWRITE_FREE_SHARE", 0.0)
    assert store_rewrite.rewrite_if_worth_it(store.con, path)
    store.close()
    ro = connect(path, read_only=True)
    try:
        kept = ro.execute(f"SELECT count(*) FROM {V5_SPANS_TABLE}").fetchone()
    finally:
        ro.close()
    assert kept == (30,)
    _with_new_run(path, before)


def _nulls(t: int) -> list[Batch]:
    return [Batch("nvml", T0 + t, ["gpu0"], ["gpu.utilization"], [float("nan") if t % 2 else 0.5])]


def _values(con) -> list:
    return [v for (v,) in con.execute("SELECT value FROM samples ORDER BY ts").fetchall()]


@pytest.mark.parametrize("how", ["move", "close"])
def test_a_nan_sample_reads_the_same_before_and_after_it_is_moved_into_spans(tmp_path, how):
    """The writer's table keeps a NaN sample as NULL (DuckDB's scan of a NumPy array); the
    move (``_move_chunk``) and the sort at close (``_sort_recent_into``) read it back from
    ``fetchnumpy``'s masked array: it must stay NULL, not become the 0.0 under the mask."""
    path = tmp_path / "a.duckdb"
    store = Store(path)
    for t in range(6):
        store.write_ticks([("r", _nulls(t))])
    before = _values(store.con)
    assert before == [0.5, None] * 3
    if how == "move":
        store.compact(finish=True)
        after = _values(store.con)
        store.close()
    else:
        store.close()
        ro = connect(path, read_only=True)
        after = _values(ro)
        ro.close()
    assert after == before


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
