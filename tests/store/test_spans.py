"""Schema 4: the writer's rows moved into series-clustered spans with tick ids, behind the same
views; version-3 files read as they are and upgraded when a run is appended; nothing lost or
doubled when a move fails, is interrupted, or runs beside readers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pytest

import agent.store_rewrite as rewrite
import agent.store_spans as spans
from agent.model import Batch
from agent.report import build_report
from agent.runs import LocalReadConnection
from agent.series import apply_v3_layout
from agent.store import (
    _SCHEMA_V3_OPS,
    _SCHEMA_V3_TRACKING,
    NEW_FILE_BLOCK_SIZE,
    SCHEMA_VERSION,
    Store,
    connect,
)
from agent.store_spans import has_spans, span_order
from tests.store.test_layout import T0, _v2_file, _views

ENTITIES = [f"gpu{g}" for g in range(4) for _ in range(3)]
METRICS = ["gpu.utilization", "gpu.power", "gpu.energy"] * 4


def _tick(t: int) -> Batch:
    values = [
        v
        for g in range(4)
        for v in ((t * 7 + g) % 10 / 10.0, 300.0 + g + 0.25 * (t % 4), 1e9 + 400.0 * t + g)
    ]
    return Batch("nvml", T0 + t + 0.001 * (t % 3), ENTITIES, METRICS, values)


def _expected(ticks: range) -> list[tuple]:
    return sorted(
        (e, m, round((T0 + t + 0.001 * (t % 3)) * 1e6), v)
        for t in ticks
        for e, m, v in zip(_tick(t).entities, _tick(t).metrics, _tick(t).values)
    )


def _stored(con) -> list[tuple]:
    return sorted(
        con.execute(
            "SELECT entity, metric, epoch_us(ts), value FROM samples WHERE run_id = 'r'"
        ).fetchall()
    )


def _counts(con) -> tuple[int, int]:
    """(rows not yet in spans, rows in spans)."""
    (recent,) = con.execute(
        "SELECT (SELECT count(*) FROM sample_recent) + (SELECT count(*) FROM sample_moving)"
    ).fetchall()[0]
    (spanned,) = con.execute("SELECT count(*) FROM sample_spans").fetchall()[0]
    return recent, spanned


@pytest.fixture
def small_spans(monkeypatch):
    """Spans of 10 ticks, moved 20 rows per step (several steps per move)."""
    monkeypatch.setattr(spans, "SPAN_TICKS", 10)
    monkeypatch.setattr(spans, "CHUNK_ROWS", 20)


def test_a_closed_recording_keeps_every_sample_in_spans_behind_the_same_views(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    for t in range(25):
        store.write_ticks([("r", [_tick(t)])])
    live = store.cursor()
    before = _views(live)
    assert _counts(live) == (25 * 12, 0)
    live.close()
    store.close()
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        assert _views(ro) == before
        assert _stored(ro) == _expected(range(25))
        assert _counts(ro) == (0, 25 * 12)
        cols = [d[0] for d in ro.execute("SELECT * FROM sample_values LIMIT 0").description]
        assert cols == ["series_id", "ts", "value"]
    finally:
        ro.close()


def test_rows_move_into_spans_while_recording_once_the_writer_holds_a_span(tmp_path, small_spans):
    store = Store(tmp_path / "a.duckdb")
    for t in range(65):
        store.write_ticks([("r", [_tick(t)])])
    con = store.cursor()
    recent, spanned = _counts(con)
    stored = _stored(con)
    con.close()
    store.close()
    assert recent < 10 * 12 and recent + spanned == 65 * 12 and spanned >= 60 * 12
    assert stored == _expected(range(65))
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        assert _stored(ro) == _expected(range(65))
        (ticks, distinct) = ro.execute(
            "SELECT count(*), count(DISTINCT tick) FROM sample_ticks"
        ).fetchall()[0]
        assert ticks == distinct == 65
    finally:
        ro.close()


def test_a_span_is_stored_by_series_each_series_ticks_alternating_direction(tmp_path, small_spans):
    store = Store(tmp_path / "a.duckdb")
    for t in range(20):  # two spans of 10 ticks, both moved in place while recording
        store.write_ticks([("r", [_tick(t)])])
    store.close()
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    rows = ro.execute("SELECT series_id, tick FROM sample_span_rows ORDER BY rowid").fetchall()
    ro.close()
    assert len(rows) == 20 * 12
    for span in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
        sids = [s for s, _ in span]
        assert sids == sorted(sids)
        for sid in set(sids):
            ticks = [t for s, t in span if s == sid]
            assert ticks == sorted(ticks, reverse=sid % 2 == 1)


@pytest.mark.parametrize("chunk_rows", [2**20, 50])
def test_a_short_run_is_sorted_into_a_fresh_file_series_by_metric_ticks_alternating(
    tmp_path, monkeypatch, chunk_rows
):
    monkeypatch.setattr(rewrite, "FRESH_CHUNK_ROWS", chunk_rows)  # 50: in five parts
    store = Store(tmp_path / "a.duckdb")
    for t in range(20):
        store.write_ticks([("r", [_tick(t)])])
    live = store.cursor()
    before = _views(live)
    live.close()
    store.close()
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    rows = ro.execute(
        "SELECT p.series_id, p.tick, s.metric, s.entity FROM sample_span_rows p "
        "JOIN series s USING (series_id) ORDER BY p.rowid"
    ).fetchall()
    size = ro.execute(
        "SELECT block_size, free_blocks FROM pragma_database_size() "
        "WHERE database_name = current_database()"
    ).fetchone()
    assert _views(ro) == before and _counts(ro) == (0, 20 * 12)
    ro.close()
    assert size == (rewrite.SMALL_FILE_BLOCK_SIZE, 0)
    runs = [rows[i][2:] for i in range(len(rows)) if i == 0 or rows[i][0] != rows[i - 1][0]]
    assert runs == sorted(runs) and len(runs) == 12  # each series once, by metric then entity
    for position, (metric, entity) in enumerate(runs):
        ticks = [t for _, t, m, e in rows if (m, e) == (metric, entity)]
        assert ticks == sorted(ticks, reverse=position % 2 == 1)


def test_a_fresh_file_of_many_samples_keeps_the_originals_block_size(tmp_path, monkeypatch):
    monkeypatch.setattr(rewrite, "SMALL_FILE_ROWS", 100)  # 240 samples count as many
    store = Store(tmp_path / "a.duckdb")
    for t in range(20):
        store.write_ticks([("r", [_tick(t)])])
    store.close()
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        size = ro.execute(
            "SELECT block_size, free_blocks FROM pragma_database_size() "
            "WHERE database_name = current_database()"
        ).fetchone()
        assert _counts(ro) == (0, 20 * 12)
    finally:
        ro.close()
    assert size == (NEW_FILE_BLOCK_SIZE, 0)


def test_span_order_sorts_by_series_then_tick_zigzag():
    sids = np.array([2, 1, 2, 1, 1], dtype=np.int32)
    ticks = np.array([5, 5, 6, 6, 7], dtype=np.int32)
    order = span_order(sids, ticks)
    assert list(zip(sids[order], ticks[order])) == [(1, 7), (1, 6), (1, 5), (2, 5), (2, 6)]


def test_a_move_that_fails_halfway_leaves_every_sample_readable_once(
    tmp_path, small_spans, monkeypatch
):
    lines: list[str] = []
    store = Store(tmp_path / "a.duckdb", report=lines.append)
    real = spans.span_order
    calls = {"n": 0}

    def failing(sids, ticks):
        calls["n"] += 1
        if calls["n"] == 3:
            raise duckdb.IOException("IO Error: No space left on device")
        return real(sids, ticks)

    monkeypatch.setattr(spans, "span_order", failing)
    for t in range(15):
        store.write_ticks([("r", [_tick(t)])])
    con = store.cursor()
    assert _stored(con) == _expected(range(15))
    assert store.compact_failures == 1
    assert len(lines) == 1 and "spans" in lines[0] and "disk full" in lines[0]
    store._compact_retry_at = 0.0  # the retry, without waiting 30 s
    store.write_ticks([("r", [_tick(15)])])
    assert _stored(con) == _expected(range(16))
    con.close()
    store.close()
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        assert _stored(ro) == _expected(range(16))
        assert _counts(ro) == (0, 16 * 12)
    finally:
        ro.close()


def test_a_reader_sees_every_sample_exactly_once_between_the_steps_of_a_move(tmp_path, small_spans):
    store = Store(tmp_path / "a.duckdb")
    store._background = True  # steps run only when asked, as in the writer's thread
    for t in range(10):
        store.write_ticks([("r", [_tick(t)])])
    reader = store.cursor()
    seen = []
    with store._write_lock:
        assert store._spans.due(store.con)
        more = True
        while more:
            more = store._spans.step(store.con)
            seen.append((_counts(reader), _stored(reader)))
    assert len(seen) >= 5  # 120 rows, 20 a step
    for (recent, spanned), stored in seen:
        assert recent + spanned == 10 * 12
        assert stored == _expected(range(10))
    assert _counts(reader) == (0, 10 * 12)
    reader.close()
    store.close()


def test_each_step_of_a_move_holds_at_most_a_chunk_of_rows(tmp_path, small_spans):
    store = Store(tmp_path / "a.duckdb")
    store._background = True
    for t in range(10):
        store.write_ticks([("r", [_tick(t)])])
    moved = []
    with store._write_lock:
        more = True
        while more:
            before = store._spans.moved_rows
            more = store._spans.step(store.con)
            moved.append(store._spans.moved_rows - before)
    store.close()
    assert max(moved) <= spans.CHUNK_ROWS and sum(moved) == 10 * 12


def kill_during_a_move(path: Path, setup: str, ticks: str) -> None:
    """A writer in a child process, spans of 10 ticks moved 20 rows a step, killed (``kill -9``
    as far as the file can tell) after two steps of its first move, inside its transaction.
    ``setup`` runs first (module constants), ``ticks`` gives tick ``t``'s batches."""
    child = textwrap.dedent(
        f"""
        import os
        import agent.store_spans as spans
        spans.SPAN_TICKS, spans.CHUNK_ROWS = 10, 20
        {setup}
        from agent.store import Store
        store = Store({str(path)!r})
        store._background = True
        for t in range(12):
            store.write_ticks([("r", {ticks})])
        with store._write_lock:
            store._spans.step(store.con)
            store._spans.step(store.con)
        os._exit(9)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 9, done.stderr


def test_an_agent_killed_during_a_move_loses_no_sample(tmp_path):
    path = tmp_path / "a.duckdb"
    kill_during_a_move(path, "from tests.store.test_spans import _tick", "[_tick(t)]")
    ro = connect(path, read_only=True)
    try:
        # the move was one open transaction: its rows are where they were before it
        assert _counts(ro) == (12 * 12, 0)
        assert _stored(ro) == _expected(range(12))
    finally:
        ro.close()
    store = Store(path)  # the next writer finishes the move
    store.close()
    ro = connect(path, read_only=True)
    try:
        assert _counts(ro) == (0, 12 * 12) and _stored(ro) == _expected(range(12))
    finally:
        ro.close()


def _v3_file(path) -> None:
    """A version-3 file as its writer left it: ``sample_values(series_id, ts, value)``."""
    _v2_file(path)
    con = duckdb.connect(str(path))
    con.execute(_SCHEMA_V3_OPS)
    con.execute(_SCHEMA_V3_TRACKING)
    apply_v3_layout(con)
    con.execute("UPDATE accelwatch_meta SET value = '3' WHERE key = 'schema_version'")
    con.close()


def test_a_version_3_file_is_read_as_it_is_and_left_byte_identical(tmp_path):
    path = tmp_path / "v3.duckdb"
    _v3_file(path)
    before = path.read_bytes()
    ro = connect(path, read_only=True)
    try:
        assert not has_spans(ro)
        report = build_report(LocalReadConnection(ro), "second", str(path))
    finally:
        ro.close()
    assert path.read_bytes() == before
    assert [d.entity for d in report.summary.devices] == ["gpu0", "gpu1"]


def test_appending_a_run_to_a_version_3_file_upgrades_it_with_identical_old_runs(tmp_path):
    path = tmp_path / "v3.duckdb"
    _v3_file(path)
    ro = connect(path, read_only=True)
    before = _views(ro)
    old_report = build_report(LocalReadConnection(ro), "first", str(path)).to_json()
    ro.close()
    store = Store(path)
    for t in range(5):
        store.write_ticks([("r", [_tick(t)])])
    store.close()
    ro = connect(path, read_only=True)
    try:
        assert has_spans(ro)
        version = ro.execute("SELECT value FROM accelwatch_meta WHERE key = 'schema_version'")
        assert version.fetchall()[0][0] == str(SCHEMA_VERSION)
        after = _views(ro)
        for view, (cols, rows) in before.items():
            assert after[view][0] == cols
            kept = [r for r in after[view][1] if "r" not in (r[0],)] if rows else []
            assert kept == rows, view
        assert _stored(ro) == _expected(range(5))
        assert _counts(ro) == (0, 2 * (60 * 4 + 60) + 5 * 12)
        new_report = build_report(LocalReadConnection(ro), "first", str(path)).to_json()
    finally:
        ro.close()
    assert new_report["summary"] == old_report["summary"]
    assert new_report["findings"] == old_report["findings"]


def test_span_order_of_a_stable_layout_equals_the_general_sort():
    rng = np.random.default_rng(1)
    layout = rng.permutation(np.arange(3, 40, dtype=np.int32))
    sids = np.tile(layout, 25)
    ticks = np.repeat(np.arange(100, 125, dtype=np.int32), len(layout))
    fast = span_order(sids, ticks)
    shuffled = rng.permutation(len(sids))
    general = shuffled[span_order(sids[shuffled], ticks[shuffled])]
    assert list(zip(sids[fast], ticks[fast])) == list(zip(sids[general], ticks[general]))


def _free_blocks(path) -> tuple[int, int]:
    ro = connect(path, read_only=True)
    try:
        return ro.execute(
            "SELECT total_blocks, free_blocks FROM pragma_database_size() "
            "WHERE database_name = current_database()"
        ).fetchall()[0]
    finally:
        ro.close()


def _sizeable_run(store: Store, ticks: int = 1000) -> None:
    """300,000 values: past the writer's WAL threshold, so its rows are on disk when moved."""
    many = [f"e{i}" for i in range(300)]
    for t in range(ticks):
        values = np.sin(np.arange(300) + t) * 1e3 + t
        store.write_ticks([("r", [Batch("host", T0 + t, many, ["m"] * 300, values)])])


def test_a_small_file_is_rewritten_at_close_without_the_moved_rows_free_blocks(
    tmp_path, monkeypatch
):
    import agent.store_writer as writer

    done = []
    real = writer.rewrite_if_worth_it
    monkeypatch.setattr(
        writer, "rewrite_if_worth_it", lambda con, p: done.append(real(con, p)) or done[-1]
    )
    # the copy after a move in place: what a file whose rows could not be sorted into a fresh
    # one gets (the sort failed, or the rows are too few a share of the file)
    monkeypatch.setattr(writer, "finish_into_fresh", lambda con, p: False)
    path = tmp_path / "a.duckdb"
    store = Store(path)
    _sizeable_run(store)
    live = store.cursor()
    before = _views(live)
    live.close()
    store.close()
    total, free = _free_blocks(path)
    assert done == [True] and total > 0 and free == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.duckdb"]
    ro = connect(path, read_only=True)
    try:
        assert _views(ro) == before
    finally:
        ro.close()


def test_a_failed_rewrite_leaves_the_file_as_it_was_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "a.duckdb"
    lines: list[str] = []
    store = Store(path, report=lines.append)
    _sizeable_run(store)
    live = store.cursor()
    before = _views(live)
    live.close()

    def refuse(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rewrite.os, "replace", refuse)
    store.close()
    assert len(lines) == 1 and "rewrite" in lines[0] and "No space" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.duckdb"]
    ro = connect(path, read_only=True)
    try:
        assert _views(ro) == before
        assert _counts(ro) == (0, 1000 * 300)
    finally:
        ro.close()
    assert _free_blocks(path)[1] > 0  # the moved rows' blocks are still free


def test_the_writers_thread_moves_rows_into_spans_between_its_flushes(tmp_path, small_spans):
    import time

    store = Store(tmp_path / "a.duckdb", flush_interval=0.05)
    store.start()
    for t in range(35):
        store.submit("r", [_tick(t)])
        time.sleep(0.005)
    reader = store.cursor()
    deadline = time.monotonic() + 60
    # A move starts once sample_recent holds 10 ticks; flushes carry a varying number of ticks,
    # so 35 ticks make two or three moves: two are certain before close.
    while _counts(reader)[1] < 20 * 12 and time.monotonic() < deadline:
        reader.begin()  # one snapshot for both reads
        recent, spanned = _counts(reader)
        assert len(_stored(reader)) == recent + spanned  # never a row twice
        reader.commit()
        time.sleep(0.05)
    spanned = _counts(reader)[1]
    reader.close()
    store.close()
    assert spanned >= 20 * 12  # moved while recording, not at close
    ro = connect(tmp_path / "a.duckdb", read_only=True)
    try:
        assert _stored(ro) == _expected(range(35))
    finally:
        ro.close()


def test_closing_a_store_twice_says_nothing_the_second_time(tmp_path):
    lines: list[str] = []
    store = Store(tmp_path / "a.duckdb", report=lines.append)
    store.write_ticks([("r", [_tick(0)])])
    store.close()
    store.close()
    assert lines == []
