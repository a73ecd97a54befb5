"""Schema 5: buckets of the analysed series written by the move into spans, in its transaction;
the frame reads them merged with the unmoved tail and gives what the raw values give; files
without them (version 4) are read as they are and upgraded without mixing the two."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

import agent.analysis.frame_buckets as frame_buckets
import agent.store_buckets as buckets
import agent.store_rewrite as rewrite
import agent.store_spans as spans
from agent.analysis.frame import Window, analysed_series_where, build_frames
from agent.analysis.frame_buckets import stored_bucket_batches
from agent.model import Batch
from agent.store import SCHEMA_VERSION, Store, connect
from agent.store_buckets import has_bucket_nulls, has_buckets
from tests.store.test_layout import T0
from tests.store.test_span_rows import as_version_5, record, to_v5_spans
from tests.store.test_spans import _expected, _stored, _tick, kill_during_a_move

#: A part no rule reads (an NVLink of gpu0): moved into spans, never bucketed.
PART = "gpu0/nvlink0"


def _ticks(t: int) -> list[Batch]:
    part = Batch("nvml", T0 + t, [PART], ["gpu.nvlink.tx_bytes"], [1e6 * t])
    limit = Batch("nvml", T0 + t, ["gpu0"], ["gpu.power.limit"], [700.0])  # flat buckets
    return [_tick(t), part, limit]


@pytest.fixture
def small(monkeypatch):
    """Spans of 7 ticks moved 20 rows a step, buckets of 5 s: span boundaries cut buckets;
    read back 5 series at a time."""
    monkeypatch.setattr(frame_buckets, "BATCH_SERIES", 5)
    monkeypatch.setattr(spans, "SPAN_TICKS", 7)
    monkeypatch.setattr(spans, "CHUNK_ROWS", 20)
    monkeypatch.setattr(buckets, "BUCKET_BASE_S", 5)
    monkeypatch.setattr(buckets, "BUCKET_BASE_US", 5_000_000)
    monkeypatch.setattr(rewrite, "BUCKETS_FROM_S", 0.0)  # seconds-long files keep buckets


def _record(path: Path, ticks: range, *, close: bool = True) -> Store:
    store = Store(path)
    for t in ticks:
        store.write_ticks([("r", _ticks(t))])
    if close:
        store.close()
    return store


#: Every stored bucket, a flat one (all its values equal) with its columns worked out.
STORED = """(SELECT series_id, bucket, n, total, low, min, max FROM sample_buckets
            UNION ALL SELECT series_id, bucket, n, n * value,
                             CASE WHEN value < 0.05 THEN n ELSE 0 END, value, value
            FROM sample_buckets_flat)"""


def _merged_buckets(con) -> list[tuple]:
    """Stored buckets merged by (series, bucket): (series, bucket, n, sum, low, min, max)."""
    return con.execute(
        f"""SELECT series_id, bucket, sum(n), round(sum(total), 6), sum(low), min(min), max(max)
           FROM {STORED} GROUP BY ALL ORDER BY ALL"""
    ).fetchall()


def _raw_buckets(con, width_us: int) -> list[tuple]:
    """The same aggregates from the moved raw values of the bucketed series."""
    return con.execute(
        f"""SELECT p.series_id, epoch_us(k.ts) // {width_us}, count(*), round(sum(value), 6),
                  count_if(value < 0.05), min(value), max(value)
           FROM sample_spans p JOIN sample_ticks k USING (tick)
           WHERE p.series_id IN (SELECT series_id FROM bucket_series WHERE bucketed)
           GROUP BY ALL ORDER BY ALL"""
    ).fetchall()


def _frame(con, bucket_s: float, stored: bool) -> list[tuple]:
    build_frames(con, Window("r", bucket_s, stored_buckets=stored))
    return sorted(
        con.execute(
            "SELECT entity, metric, source, k, n, round(avg, 9), min, max, low_share FROM aw_agg"
        ).fetchall()
    )


def test_the_move_writes_buckets_of_the_series_the_analysis_reads_and_only_those(tmp_path, small):
    _record(tmp_path / "a.duckdb", range(25))
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        decided = dict(ro.execute("SELECT series_id, bucketed FROM bucket_series").fetchall())
        analysed = {
            r[0]
            for r in ro.execute(
                f"SELECT series_id FROM series WHERE {analysed_series_where()}"
            ).fetchall()
        }
        (part,) = ro.execute("SELECT series_id FROM series WHERE entity = ?", [PART]).fetchone()
        assert len(decided) == 14 and {s for s, b in decided.items() if b} == analysed
        assert decided[part] is False and len(analysed) == 13
        (flat,) = ro.execute("SELECT count(*) FROM sample_buckets_flat").fetchone()
        assert flat >= 5  # the power limit's buckets, stored as one value each
        # every moved value of a bucketed series is in exactly one bucket
        assert _merged_buckets(ro) == _raw_buckets(ro, 5_000_000)
        (n,) = ro.execute(f"SELECT sum(n) FROM {STORED}").fetchone()
        assert n == 25 * 13
    finally:
        ro.close()


def test_a_short_run_sorted_into_a_fresh_file_at_close_has_the_buckets_a_move_gives(
    tmp_path, small, monkeypatch
):
    import agent.store_writer as writer

    fresh: list[bool] = []
    finish = writer.finish_into_fresh
    monkeypatch.setattr(writer, "finish_into_fresh", lambda con, p: fresh.append(finish(con, p)))
    _record(tmp_path / "a.duckdb", range(6))  # fewer ticks than a span: nothing moved before
    assert fresh == [True]
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        assert ro.execute("SELECT count(*) FROM sample_recent").fetchone() == (0,)
        decided = dict(ro.execute("SELECT series_id, bucketed FROM bucket_series").fetchall())
        assert len(decided) == 14 and sum(decided.values()) == 13
        assert _merged_buckets(ro) == _raw_buckets(ro, 5_000_000)
        (n,) = ro.execute(f"SELECT sum(n) FROM {STORED}").fetchone()
        assert n == 6 * 13
        for width in (5.0, 10.0):
            assert _frame(ro, width, True) == _frame(ro, width, False)
    finally:
        ro.close()


def test_frames_from_buckets_equal_frames_from_raw_values_with_the_tail_unmoved(tmp_path, small):
    store = _record(tmp_path / "a.duckdb", range(33), close=False)
    con = store.cursor()
    try:
        (tail,) = con.execute("SELECT count(*) FROM sample_recent").fetchone()
        assert tail > 0  # the unmoved tail is aggregated at read time
        for width in (5.0, 10.0, 30.0):
            assert _frame(con, width, True) == _frame(con, width, False)
            batches = stored_bucket_batches(con, "r", "true", width, [])
            assert batches is not None
            got = list(batches)
            rows = {c: np.concatenate([b[c] for b in got]) for c in got[0]}
            # every value once: buckets, the move's leftovers, the tail; each bucket one row
            assert rows["n"].sum() == 33 * 14
            assert len(set(zip(rows["series_id"], rows["k"]))) == len(rows["k"])
    finally:
        con.close()
        store.close()


def test_a_frame_width_the_buckets_cannot_serve_reads_the_raw_values(tmp_path, small):
    _record(tmp_path / "a.duckdb", range(12))
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        assert stored_bucket_batches(ro, "r", "true", 2.0, []) is None  # not a multiple
        assert stored_bucket_batches(ro, "r", "true", 5.0, ["ts >= $start"]) is None
        assert stored_bucket_batches(ro, "r", "true", 5.0, []) is not None
        assert _frame(ro, 2.0, True) == _frame(ro, 2.0, False)
    finally:
        ro.close()


def test_buckets_counted_with_another_idle_threshold_are_not_read(tmp_path, small):
    _record(tmp_path / "a.duckdb", range(12))
    con = duckdb.connect(str(tmp_path / "a.duckdb"))
    con.execute("UPDATE accelwatch_meta SET value = '0.1' WHERE key = 'bucket_low_below'")
    con.close()
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        assert stored_bucket_batches(ro, "r", "true", 5.0, []) is None
    finally:
        ro.close()


def test_a_move_that_fails_halfway_leaves_no_bucket_behind(tmp_path, small, monkeypatch):
    store = Store(tmp_path / "a.duckdb", report=lambda line: None)
    real = spans.insert_buckets
    calls = {"n": 0}

    def failing(cursor, rows):
        calls["n"] += 1
        if calls["n"] == 3:
            raise duckdb.IOException("IO Error: No space left on device")
        real(cursor, rows)

    monkeypatch.setattr(spans, "insert_buckets", failing)
    for t in range(15):
        store.write_ticks([("r", _ticks(t))])
    assert store.compact_failures == 1
    store._compact_retry_at = 0.0
    store.close()
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        assert _merged_buckets(ro) == _raw_buckets(ro, 5_000_000)
        (n,) = ro.execute(f"SELECT sum(n) FROM {STORED}").fetchone()
        assert n == 15 * 13
        (decisions,) = ro.execute("SELECT count(*) FROM bucket_series").fetchone()
        assert decisions == 14  # the rolled-back move's decisions are gone with it
    finally:
        ro.close()


def test_an_agent_killed_during_a_move_leaves_each_value_in_one_bucket(tmp_path):
    path = tmp_path / "a.duckdb"
    setup = (
        "import agent.store_buckets as buckets; "
        "buckets.BUCKET_BASE_S, buckets.BUCKET_BASE_US = 5, 5_000_000; "
        "from tests.store.test_buckets import _ticks"
    )
    kill_during_a_move(path, setup, "_ticks(t)")
    ro = connect(path, read_only=True)
    try:
        assert ro.execute(f"SELECT count(*) FROM {STORED}").fetchone() == (0,)
        assert ro.execute("SELECT count(*) FROM bucket_series").fetchone() == (0,)
    finally:
        ro.close()
    Store(path).close()  # the next writer finishes the move
    ro = connect(path, read_only=True)
    try:
        assert _merged_buckets(ro) == _raw_buckets(ro, 5_000_000)
        assert ro.execute(f"SELECT sum(n) FROM {STORED}").fetchone() == (12 * 13,)
    finally:
        ro.close()


def _as_version_4(path: Path) -> None:
    """The file as the version-4 writer left it: spans, no bucket tables or meta rows."""
    con = duckdb.connect(str(path))
    to_v5_spans(con)
    con.execute(
        "DROP TABLE sample_buckets; DROP TABLE sample_buckets_flat; DROP TABLE bucket_series"
    )
    con.execute("DELETE FROM accelwatch_meta WHERE key LIKE 'bucket_%'")
    con.execute("UPDATE accelwatch_meta SET value = '4' WHERE key = 'schema_version'")
    con.close()


def test_a_version_4_file_is_read_as_it_is_and_left_byte_identical(tmp_path, small):
    path = tmp_path / "v4.duckdb"
    _record(path, range(20))
    with_buckets = connect(path, read_only=True)
    expected = _frame(with_buckets, 5.0, True)
    with_buckets.close()
    _as_version_4(path)
    before = path.read_bytes()
    ro = connect(path, read_only=True)
    try:
        assert not has_buckets(ro)
        assert _frame(ro, 5.0, True) == expected
        assert _stored(ro) == sorted(
            [*_expected(range(20)),
             *((PART, "gpu.nvlink.tx_bytes", (T0 + t) * 10**6, 1e6 * t) for t in range(20)),
             *(("gpu0", "gpu.power.limit", (T0 + t) * 10**6, 700.0) for t in range(20))]
        )  # fmt: skip
    finally:
        ro.close()
    assert path.read_bytes() == before


def test_appending_a_run_to_a_version_4_file_reads_the_old_run_raw_and_buckets_the_new(
    tmp_path, small
):
    path = tmp_path / "v4.duckdb"
    _record(path, range(20))
    _as_version_4(path)
    ro = connect(path, read_only=True)
    old = _frame(ro, 5.0, False)
    ro.close()
    store = Store(path)
    for t in range(40, 52):
        store.write_ticks([("second", _ticks(t))])
    store.close()
    ro = connect(path, read_only=True)
    try:
        version = ro.execute("SELECT value FROM accelwatch_meta WHERE key = 'schema_version'")
        assert version.fetchone() == (str(SCHEMA_VERSION),)
        old_ids = {
            r[0] for r in ro.execute("SELECT series_id FROM series WHERE run_id = 'r'").fetchall()
        }
        decided = dict(ro.execute("SELECT series_id, bucketed FROM bucket_series").fetchall())
        assert all(decided[s] is False for s in old_ids)  # moved before buckets: read raw
        assert any(decided[s] for s in set(decided) - old_ids)
        assert stored_bucket_batches(ro, "r", "true", 5.0, []) is None
        assert _frame(ro, 5.0, True) == old
        build_frames(ro, Window("second", 5.0))
        (n,) = ro.execute("SELECT sum(n) FROM aw_agg").fetchone()
        assert n == 12 * 13
    finally:
        ro.close()


def _fresh_closes(monkeypatch) -> list[bool]:
    import agent.store_writer as writer

    fresh: list[bool] = []
    finish = writer.finish_into_fresh
    monkeypatch.setattr(writer, "finish_into_fresh", lambda con, p: fresh.append(finish(con, p)))
    return fresh


def test_a_file_too_short_for_any_stored_bucket_is_closed_without_buckets_and_reads_raw(
    tmp_path, small, monkeypatch
):
    monkeypatch.setattr(rewrite, "BUCKETS_FROM_S", 12.5 * 3600)
    fresh = _fresh_closes(monkeypatch)
    _record(tmp_path / "a.duckdb", range(6))
    assert fresh == [True]
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        decided = dict(ro.execute("SELECT series_id, bucketed FROM bucket_series").fetchall())
        assert len(decided) == 14 and not any(decided.values())  # recorded: never bucketed
        assert ro.execute(f"SELECT count(*) FROM {STORED}").fetchone() == (0,)
        assert ro.execute("SELECT count(*) FROM sample_spans").fetchone() == (6 * 14,)
        assert stored_bucket_batches(ro, "r", analysed_series_where(), 5.0, ()) is None
        assert _frame(ro, 5.0, True) == _frame(ro, 5.0, False) != []
    finally:
        ro.close()


def test_series_bucketed_by_an_earlier_move_keep_their_buckets_in_a_short_file_at_close(
    tmp_path, small, monkeypatch
):
    monkeypatch.setattr(rewrite, "BUCKETS_FROM_S", 12.5 * 3600)
    fresh = _fresh_closes(monkeypatch)
    _record(tmp_path / "a.duckdb", range(12))  # 7 ticks moved with buckets, 5 left at close
    assert fresh == [True]
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        decided = dict(ro.execute("SELECT series_id, bucketed FROM bucket_series").fetchall())
        assert len(decided) == 14 and sum(decided.values()) == 13
        assert _merged_buckets(ro) == _raw_buckets(ro, 5_000_000)
        (n,) = ro.execute(f"SELECT sum(n) FROM {STORED}").fetchone()
        assert n == 12 * 13  # the last 5 ticks too: no bucketed series has raw moved values
        assert _frame(ro, 5.0, True) == _frame(ro, 5.0, False)
    finally:
        ro.close()


def test_the_span_without_buckets_is_one_no_post_run_frame_reads_stored_buckets_for():
    from agent.analysis.engine import choose_bucket_s

    base = buckets.BUCKET_BASE_S
    assert choose_bucket_s(rewrite.BUCKETS_FROM_S, rewrite.DENSE_TICK_S) < base
    assert choose_bucket_s(rewrite.BUCKETS_FROM_S * 1.01, 1.0) >= base


def _ticks_with_nulls(t: int) -> list[Batch]:
    """``_ticks`` with NaN (stored as NULL) samples: gpu0's utilization every other tick, and
    gpu1's for a whole 5 s bucket (ticks 10-14)."""
    tick = _tick(t)
    values = list(tick.values)
    for i, (entity, metric) in enumerate(zip(tick.entities, tick.metrics, strict=True)):
        if metric == "gpu.utilization" and (
            (entity == "gpu0" and t % 2) or (entity == "gpu1" and 10 <= t <= 14)
        ):
            values[i] = float("nan")
    return [Batch(tick.source, tick.ts, tick.entities, tick.metrics, values)]


def test_null_samples_are_skipped_alike_by_the_buckets_and_the_raw_values(tmp_path, small):
    path = tmp_path / "a.duckdb"
    record(path, "r", range(25), _ticks_with_nulls)
    ro = connect(path, read_only=True)
    try:
        (nulls,) = ro.execute("SELECT count(*) FROM samples WHERE value IS NULL").fetchone()
        assert nulls == 12 + 5  # still NULL once moved into spans, never 0.0
        (stored,) = ro.execute(f"SELECT count(*) FROM {STORED}").fetchone()
        assert stored > 0
        for width in (5.0, 10.0):
            assert _frame(ro, width, True) == _frame(ro, width, False)
    finally:
        ro.close()


def test_a_version_5_files_buckets_are_read_without_null_counts_and_get_them_on_upgrade(
    tmp_path, small
):
    path = tmp_path / "v5.duckdb"
    _record(path, range(20))
    as_version_5(path)
    ro = connect(path, read_only=True)
    try:
        assert not has_bucket_nulls(ro)
        old = _frame(ro, 5.0, True)
        assert old == _frame(ro, 5.0, False) != []
    finally:
        ro.close()
    record(path, "second", range(40, 52), _ticks_with_nulls)
    ro = connect(path, read_only=True)
    try:
        assert has_bucket_nulls(ro)
        assert _frame(ro, 5.0, True) == old  # run "r"'s frame, unchanged by the upgrade
    finally:
        ro.close()
