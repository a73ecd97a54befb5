"""``accelwatch export``: hive-partitioned Parquet/CSV that DuckDB reads back over a directory."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import duckdb
import pytest

from tests.experiments.recordings import Recording, record
from tests.helpers import REPO, query, run_cli


def _documented_query(out: Path) -> str:
    text = (REPO / "docs" / "readers.md").read_text()
    (sql,) = re.findall(r"```sql\n-- export-query\n(.*?)```", text, re.S)
    return sql.replace("DIR", str(out))


def test_export_reads_back_over_the_directory_with_the_documented_query(
    baseline_and_candidate, simulated_db, tmp_path
):
    a, b = baseline_and_candidate
    out = tmp_path / "exports"
    for db, run in ((a, "run-a"), (b, "fast"), (simulated_db, "sim-healthy")):
        done = run_cli("export", run, "--db", str(db), "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("\n") == 1 and "exported 1 run(s)" in done.stderr
    rows = duckdb.sql(_documented_query(out)).fetchall()
    (sim_id,) = query(simulated_db, "SELECT run_id FROM runs")[0]
    expected = {
        "run-a": ("base", 60),  # 30 ticks x 2 GPUs
        "run-b": ("fast", 60),
        sim_id: ("sim-healthy", query(simulated_db, "SELECT count(*) FROM samples WHERE "
                                      "metric = 'gpu.utilization'")[0][0]),
    }  # fmt: skip
    assert {r[0]: (r[1], r[3]) for r in rows} == expected
    assert {r[2] for r in rows} == {"gpu.utilization"}


def test_export_has_every_table_partitioned_by_run(baseline_and_candidate, tmp_path):
    a, b = baseline_and_candidate
    out = tmp_path / "x"
    done = run_cli("export", "run-a", "run-b", "--db", str(a), "--db", str(b), "--out", str(out))
    assert done.returncode == 0, done.stderr
    for table in ("runs", "samples", "steps", "entities", "config"):
        for run in ("run-a", "run-b"):
            assert list((out / table / f"run_id={run}").glob("*.parquet")), (table, run)
    assert list((out / "findings" / "run_id=run-a").glob("*.parquet"))
    assert not (out / "findings" / "run_id=run-b").exists()  # run-b has no findings
    steps = duckdb.sql(
        f"SELECT run_id, rank, max(step), avg(step_time) FROM read_parquet("
        f"'{out}/steps/**/*.parquet', hive_partitioning = true) GROUP BY ALL ORDER BY run_id"
    ).fetchall()
    assert steps == [("run-a", 0, 150.0, pytest.approx(0.2)), ("run-b", 0, 180.0,
                     pytest.approx(0.154))]  # fmt: skip
    samples = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{out}/samples/**/*.parquet', hive_partitioning=1)"
    ).fetchall()[0][0]
    assert samples == sum(query(db, "SELECT count(*) FROM samples")[0][0] for db in (a, b))
    config = duckdb.sql(
        f"SELECT run_id, key, value FROM read_parquet('{out}/config/**/*.parquet', "
        "hive_partitioning = true) WHERE key = 'lr' ORDER BY run_id"
    ).fetchall()
    assert config == [("run-a", "lr", "0.001"), ("run-b", "lr", "0.0003")]


def test_exported_files_are_0600_and_directories_0700(baseline_and_candidate, tmp_path):
    a, _ = baseline_and_candidate
    out = tmp_path / "private"
    assert run_cli("export", "run-a", "--db", str(a), "--out", str(out)).returncode == 0
    for root, _dirs, files in os.walk(out):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        for f in files:
            assert stat.S_IMODE(os.stat(Path(root) / f).st_mode) == 0o600, f


def test_export_csv_reads_back_with_hive_partitioning(baseline_and_candidate, tmp_path):
    a, _ = baseline_and_candidate
    out = tmp_path / "csv"
    done = run_cli("export", "run-a", "--db", str(a), "--out", str(out), "--format", "csv")
    assert done.returncode == 0, done.stderr
    n = duckdb.sql(
        f"SELECT count(*) FROM read_csv('{out}/samples/**/*.csv', hive_partitioning = true) "
        "WHERE run_id = 'run-a'"
    ).fetchall()[0][0]
    assert n == query(a, "SELECT count(*) FROM samples")[0][0]


def test_exporting_a_run_again_is_refused_in_one_line_unless_overwrite(
    baseline_and_candidate, tmp_path
):
    a, _ = baseline_and_candidate
    out = tmp_path / "again"
    assert run_cli("export", "run-a", "--db", str(a), "--out", str(out)).returncode == 0
    before = sorted(p for p in out.rglob("*") if p.is_file())
    again = run_cli("export", "run-a", "--db", str(a), "--out", str(out))
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert "already exported" in again.stderr
    assert sorted(p for p in out.rglob("*") if p.is_file()) == before
    forced = run_cli("export", "run-a", "--db", str(a), "--out", str(out), "--overwrite")
    assert forced.returncode == 0, forced.stderr
    n = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{out}/samples/**/*.parquet', hive_partitioning=1)"
    ).fetchall()[0][0]
    assert n == query(a, "SELECT count(*) FROM samples")[0][0]  # replaced, not doubled


def test_export_to_a_file_or_of_an_unknown_run_is_one_line(baseline_and_candidate, tmp_path):
    a, _ = baseline_and_candidate
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = run_cli("export", "run-a", "--db", str(a), "--out", str(blocker))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    unknown = run_cli("export", "nope", "--db", str(a), "--out", str(tmp_path / "o"))
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()
    missing = run_cli("export", "run-a", "--db", str(a), "--out", str(tmp_path))
    assert missing.returncode == 0  # an existing directory is fine


def test_export_of_client_metrics_when_the_file_has_them(tmp_path):
    db = record(tmp_path / "m.duckdb", Recording("m1", seconds=10,
                                                  metrics={"loss": lambda i: 3.0 - i / 10}))  # fmt: skip
    out = tmp_path / "out"
    assert run_cli("export", "m1", "--db", str(db), "--out", str(out)).returncode == 0
    last = duckdb.sql(
        f"SELECT arg_max(value, step) FROM read_parquet('{out}/metrics/**/*.parquet', "
        "hive_partitioning = true) WHERE name = 'loss'"
    ).fetchall()[0][0]
    assert last == pytest.approx(2.1)
