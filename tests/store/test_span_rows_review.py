"""Review of schema 6: a sample the writer stored as NULL, and a schema-5 file's upgrade
failing halfway or followed by a move in place and a plain copy of the file."""

from __future__ import annotations

import duckdb
import pytest

from agent import store_rewrite, store_span_rows
from agent.model import Batch
from agent.store import Store, connect
from agent.store_span_rows import V5_SPANS_TABLE, has_span_rows
from tests.store.test_layout import T0
from tests.store.test_span_rows import _samples, _tick, to_v5_spans


def _ticks(store: Store, ticks: range) -> None:
    for t in ticks:
        store.write_ticks([("r", [Batch("nvml", T0 + t, ["gpu0"], ["gpu.utilization"],
                                        [float("nan") if t % 2 else 0.5])])])  # fmt: skip


def _values(con) -> list:
    return [v for (v,) in con.execute("SELECT value FROM samples ORDER BY ts").fetchall()]


@pytest.mark.parametrize("how", ["move", "close"])
def test_a_nan_sample_reads_the_same_before_and_after_it_is_moved_into_spans(tmp_path, how):
    """The writer's table keeps a NaN sample as NULL (DuckDB's scan of a NumPy array); the
    move (agent/store_spans.py ``_move_chunk``) and the sort at close
    (agent/store_rewrite.py ``_sort_recent_into``) read the rows back with ``fetchnumpy`` (a
    masked array) and ``np.asarray`` drops the mask: the NULL becomes the 0.0 under it, a
    reading that never happened (pre-existing in schema 5; schema 6 keeps it)."""
    path = tmp_path / "a.duckdb"
    store = Store(path)
    _ticks(store, range(6))
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


def _v5_file(path) -> list:
    """A schema-5 file (tests.store.test_span_rows.to_v5_spans) of run ``old``; its samples."""
    store = Store(path)
    for t in range(10):
        store.write_ticks([("old", _tick(t))])
    store.close()
    con = duckdb.connect(str(path))
    to_v5_spans(con)
    con.close()
    ro = connect(path, read_only=True)
    try:
        return _samples(ro)
    finally:
        ro.close()


def test_an_upgrade_that_fails_halfway_leaves_the_schema_5_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "v5.duckdb"
    before = _v5_file(path)

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
    store = Store(path)  # upgraded now
    for t in range(10, 20):
        store.write_ticks([("new", _tick(t))])
    store.close()
    ro = connect(path, read_only=True)
    try:
        after = _samples(ro)
    finally:
        ro.close()
    assert [r for r in after if r[0] == "old"] == before
    assert len([r for r in after if r[0] == "new"]) == 30


def test_an_upgraded_file_moved_in_place_and_copied_keeps_both_tables(tmp_path, monkeypatch):
    path = tmp_path / "v5.duckdb"
    before = _v5_file(path)
    store = Store(path)
    for t in range(10, 20):
        store.write_ticks([("new", _tick(t))])
    store.compact(finish=True)  # the Compactor's move, not the sort at close
    monkeypatch.setattr(store_rewrite, "REWRITE_FREE_SHARE", 0.0)
    assert store_rewrite.rewrite_if_worth_it(store.con, path)
    store.close()
    ro = connect(path, read_only=True)
    try:
        after = _samples(ro)
        kept = ro.execute(f"SELECT count(*) FROM {V5_SPANS_TABLE}").fetchone()
    finally:
        ro.close()
    assert kept == (30,)
    assert [r for r in after if r[0] == "old"] == before
    assert len([r for r in after if r[0] == "new"]) == 30
