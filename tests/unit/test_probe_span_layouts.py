"""The span-layout probe measures layouts that hold exactly the file's samples, gaps included."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from benchmarks import probe_span_layouts
from benchmarks.probe_span_layouts import READ, rewrite, scan
from tests.store.test_span_rows import record, v5_file


def _spans_file(path: Path) -> None:
    """Four series over 300 ticks: one full, one with a gap (a process that left and came
    back), one that starts mid-run, one every other tick (runs of one: they stay in spans);
    values that no float rounding would keep."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE sample_ticks AS SELECT i::INTEGER AS tick, "
                "TIMESTAMP '2026-12-03' + i * INTERVAL 1 SECOND + i * INTERVAL 7 MICROSECOND AS ts "
                "FROM range(1, 301) t(i)")  # fmt: skip
    con.execute(
        "CREATE TABLE sample_spans AS SELECT * FROM ("
        "SELECT 1 AS series_id, tick, tick / 3.0 AS value FROM sample_ticks UNION ALL "
        "SELECT 2, tick, pi() * tick FROM sample_ticks WHERE tick NOT BETWEEN 100 AND 140 "
        "UNION ALL SELECT 3, tick, 1e300 / tick FROM sample_ticks WHERE tick > 200 "
        "UNION ALL SELECT 4, tick, tick * 0.1 FROM sample_ticks WHERE tick % 2 = 0) "
        "ORDER BY series_id, CASE WHEN series_id % 2 = 1 THEN -tick ELSE tick END"
    )
    con.execute("CREATE TABLE bucket_series AS SELECT 1 AS series_id, false AS bucketed")
    con.close()


@pytest.mark.parametrize("layout", list(READ))
@pytest.mark.parametrize("fewer", [False, True])
def test_every_layout_holds_the_same_rows_exactly(tmp_path: Path, layout: str, fewer: bool) -> None:
    src = tmp_path / "spans.duckdb"
    _spans_file(src)
    want, _ = scan(src, "copy", rounds=1)
    dst = tmp_path / f"{layout}.duckdb"
    rewrite(src, dst, layout, min_run=64, fewer=fewer)
    assert scan(dst, layout, rounds=1)[0] == want
    con = duckdb.connect(str(dst), read_only=True)
    tables = {t for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    con.close()
    assert ("bucket_series" in tables) is not fewer


def test_the_probe_keeps_the_rows_of_a_file_upgraded_from_schema_5(tmp_path: Path) -> None:
    """An upgraded file keeps its old rows in ``sample_spans_v5`` behind the view: every
    layout must hold them too (the probe reads that table first, and does not copy it)."""
    src = tmp_path / "up.duckdb"
    v5_file(src)
    record(src, "new", range(10, 20))  # upgraded: the old rows in sample_spans_v5
    want, _ = scan(src, "copy", rounds=1)  # the view: old and new rows
    assert want[0] == 60
    dst = tmp_path / "copy.duckdb"
    rewrite(src, dst, "copy", min_run=64, fewer=False)
    assert scan(dst, "copy", rounds=1)[0] == want


def test_the_probe_parses_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        probe_span_layouts.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
