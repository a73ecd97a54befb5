"""Review of schema 6: the span-layout probe on a file upgraded from schema 5."""

from __future__ import annotations

from pathlib import Path

import duckdb

from agent.store import Store
from benchmarks.probe_span_layouts import rewrite, scan
from tests.store.test_span_rows import _tick, to_v5_spans


def test_the_probe_keeps_the_rows_of_a_file_upgraded_from_schema_5(tmp_path: Path) -> None:
    """An upgraded file keeps its old rows in ``sample_spans_v5`` behind the view: the probe's
    ``source_spans`` reads ``sample_span_rows`` only (and ``rewrite`` copies the old table
    along as a table no layout reads), so every layout lacks them and still agrees with the
    others."""
    src = tmp_path / "up.duckdb"
    store = Store(src)
    for t in range(10):
        store.write_ticks([("old", _tick(t))])
    store.close()
    con = duckdb.connect(str(src))
    to_v5_spans(con)
    con.close()
    store = Store(src)  # upgraded: the old rows in sample_spans_v5
    for t in range(10, 20):
        store.write_ticks([("new", _tick(t))])
    store.close()
    want, _ = scan(src, "copy", rounds=1)  # the view: old and new rows
    assert want[0] == 60
    dst = tmp_path / "copy.duckdb"
    rewrite(src, dst, "copy", min_run=64, fewer=False)
    assert scan(dst, "copy", rounds=1)[0] == want
