"""The post-run report of a run read through the writer's stored buckets (schema 5) gives the
findings and summary the raw values give: the same run, with its buckets and without them
(as a version-4 file holds it), reported alike within float summation order."""

from __future__ import annotations

import shutil

import duckdb
import pytest

import agent.analysis.frame as frame
import agent.store_buckets as buckets
import agent.store_spans as spans
from agent.report import build_report
from agent.runs import open_read
from tests.analysis.recording import HostProfile, Recording, record
from tests.analysis.test_report import _rounded

#: A run long enough for a few spans, GPUs 2 and 3 throttled, the loaders starving the GPUs
#: in the second half: several rules fire, over counters, gauges and idle shares.
RUN_S = 150


def _starving(t: float) -> float:
    return 0.95 if t > 75 else 0.4


@pytest.fixture
def two_files(tmp_path, monkeypatch):
    """(file with buckets, the same file as a version-4 writer left it, run id). Buckets of
    1 s (the report's width for a short run) and spans of 40 ticks: the report reads moved
    buckets and the unmoved rows of the last span alike."""
    monkeypatch.setattr(buckets, "BUCKET_BASE_S", 1)
    monkeypatch.setattr(buckets, "BUCKET_BASE_US", 1_000_000)
    monkeypatch.setattr(spans, "SPAN_TICKS", 40)
    spec = Recording(
        "throttled-thermal", RUN_S, host=HostProfile(worker_cpu=_starving, iowait=0.02)
    )
    db, run_id = record(tmp_path / "buckets.duckdb", spec)
    plain = tmp_path / "plain.duckdb"
    shutil.copy(db, plain)
    con = duckdb.connect(str(plain))
    con.execute(
        "DROP TABLE sample_buckets; DROP TABLE sample_buckets_flat; DROP TABLE bucket_series"
    )
    con.execute("DELETE FROM accelwatch_meta WHERE key LIKE 'bucket_%'")
    con.execute("UPDATE accelwatch_meta SET value = '4' WHERE key = 'schema_version'")
    con.close()
    return db, plain, run_id


def _report(path, run_id) -> dict:
    reader = open_read(path)
    try:
        report = build_report(reader, run_id, str(path))
    finally:
        reader.close()
    assert report.findings_from == "analysed"
    return report.to_json()


def test_the_report_read_through_buckets_equals_the_report_of_the_raw_values(
    two_files, monkeypatch
):
    with_buckets, without, run_id = two_files
    served = []
    real = frame.stored_bucket_batches

    def spy(*args, **kwargs):
        got = real(*args, **kwargs)
        served.append(got is not None)
        return got

    monkeypatch.setattr(frame, "stored_bucket_batches", spy)
    bucketed = _report(with_buckets, run_id)
    raw = _report(without, run_id)
    assert served == [True, False]  # the first read buckets, the version-4 file raw values
    assert bucketed["findings"], "the scenario must give findings to compare"
    assert {f["rule"] for f in bucketed["findings"]} >= {"throttling"}
    assert _rounded(bucketed) == _rounded(raw)


def _frames(path, run_id) -> dict[str, list]:
    from agent.analysis.engine import choose_bucket_s, run_bounds
    from agent.store import connect

    con = connect(path, read_only=True)
    try:
        frame.build_frames(con, frame.Window(run_id, choose_bucket_s(*run_bounds(con, run_id))))
        return {
            table: _rounded(con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall())
            for table in ("aw_agg", "aw_accel", "aw_host", "aw_proc", "aw_steps")
        }
    finally:
        con.close()


def test_every_frame_read_through_buckets_equals_the_frame_of_the_raw_values(two_files):
    with_buckets, without, run_id = two_files
    bucketed, raw = _frames(with_buckets, run_id), _frames(without, run_id)
    assert len(bucketed["aw_accel"]) == 8 * RUN_S and bucketed["aw_host"]
    assert bucketed == raw


def test_counters_and_accelerator_frame_from_the_bucket_arrays_equal_the_sql_pivots(two_files):
    """The bucket path computes ``aw_counters`` and pivots ``aw_accel`` from the merged NumPy
    arrays (agent/analysis/frame_arrays.py); the SQL path (a window over ``aw_agg``, the pivot
    of ``aw_rated``) run again on the same ``aw_agg`` gives the same rows, bit for bit."""
    from agent.analysed import analysed_series
    from agent.analysis.engine import choose_bucket_s, run_bounds
    from agent.analysis.frame_accel import accelerator_plan, build_accel_frame
    from agent.analysis.frame_sql import in_list
    from agent.catalog import CATALOG
    from agent.store import connect

    with_buckets, _, run_id = two_files
    con = connect(with_buckets, read_only=True)
    try:
        window = frame.Window(run_id, choose_bucket_s(*run_bounds(con, run_id)))
        info = frame.build_frames(con, window)

        def snapshot() -> dict[str, list]:
            return {
                t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                for t in ("aw_counters", "aw_accel", "aw_host", "aw_proc")
            }

        from_arrays = snapshot()
        analysed = analysed_series(accelerator_plan())[0]
        counters = [m for m in analysed if (c := CATALOG.get(m)) is not None and c.is_counter]
        frame.sql_counters(con, "series_id", in_list(counters), window.bucket_s)
        accels = build_accel_frame(con, accelerator_plan())
        frame._host_frame(con)
        frame._process_frame(con, run_id)
        from_sql = snapshot()
    finally:
        con.close()
    assert dict(accels) == dict(info.sources) and len(from_arrays["aw_counters"]) > 100
    assert from_arrays == from_sql


def test_one_connection_builds_frames_from_buckets_and_from_raw_values_in_turn(two_files):
    """``aw_agg`` is a view over the bucket arrays and a table over raw values: a connection
    that analyses both ways in turn replaces the one with the other, with the same rows."""
    from agent.analysis.engine import choose_bucket_s, run_bounds
    from agent.store import connect

    with_buckets, _, run_id = two_files
    con = connect(with_buckets, read_only=True)
    try:
        bucket_s = choose_bucket_s(*run_bounds(con, run_id))
        seen = []
        for stored in (True, False, True):
            frame.build_frames(con, frame.Window(run_id, bucket_s, stored_buckets=stored))
            kind = con.execute(
                "SELECT count(*) FROM duckdb_views() WHERE temporary AND view_name = 'aw_agg'"
            ).fetchone()
            rows = con.execute("SELECT entity, metric, k, n FROM aw_agg ORDER BY ALL").fetchall()
            seen.append((kind, rows))
    finally:
        con.close()
    assert [k for k, _ in seen] == [(1,), (0,), (1,)]
    assert seen[0][1] == seen[1][1] == seen[2][1] and seen[0][1]


def _outputs(path, run_id) -> dict[str, str]:
    import json

    from agent.report import render_text
    from agent.report_html import render_html

    reader = open_read(path)
    try:
        report = build_report(reader, run_id, str(path))
        return {
            "text": render_text(report),
            "md": render_text(report, markdown=True),
            "json": json.dumps(report.to_json(), indent=2, default=str),
            "html": render_html(reader, report),
        }
    finally:
        reader.close()


def test_the_report_from_the_bucket_arrays_is_the_report_of_the_sql_frames_byte_for_byte(
    two_files, monkeypatch
):
    """Before/after on a scenario run: the same file reported with the frame built from the
    bucket arrays and with the SQL path over the same merged rows gives the same text,
    Markdown, JSON and HTML, byte for byte."""
    with_buckets, _, run_id = two_files
    after = _outputs(with_buckets, run_id)
    monkeypatch.setattr(frame, "FRAME_FROM_ARRAYS", False)
    before = _outputs(with_buckets, run_id)
    assert '"rule": "throttling"' in after["json"]
    assert after == before
