"""Every read command over several databases or a glob (``--db 'nodes/*.duckdb'``)."""

from __future__ import annotations

import json

from agent.recorded import RecordedReader
from agent.store import connect
from tests.experiments.recordings import Recording, record
from tests.helpers import run_cli


def _nodes(tmp_path):
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    a = record(nodes / "a.duckdb", Recording("ra", name="job-a", seconds=10))
    b = record(nodes / "b.duckdb", Recording("rb", name="job-b", seconds=20, t0=1.7e9 + 50))
    return nodes, a, b


def test_runs_over_a_quoted_glob_lists_the_runs_of_every_file(tmp_path):
    nodes, a, b = _nodes(tmp_path)
    (nodes / "a.duckdb.wal").write_bytes(b"")  # beside a database: not one
    done = run_cli("runs", "--db", str(nodes / "*"), "--json")
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)
    assert [(r["run_id"], r["db_path"]) for r in runs] == [("ra", str(a)), ("rb", str(b))]
    assert [r["steps"] for r in runs] == [100, 200]
    by_directory = run_cli("runs", "--db", str(nodes), "--json")  # a directory: its *.duckdb
    assert [r["run_id"] for r in json.loads(by_directory.stdout)] == ["ra", "rb"]
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run_cli("runs", "--db", str(empty))
    assert none.returncode == 4 and "no *.duckdb database in directory" in none.stderr


def test_sql_and_report_over_repeated_db_read_the_union(tmp_path):
    nodes, a, b = _nodes(tmp_path)
    sql = run_cli("sql", "SELECT run_id, count(*) AS n FROM samples GROUP BY ALL ORDER BY 1",
                  "--db", str(a), "--db", str(b), "--json")  # fmt: skip
    assert sql.returncode == 0, sql.stderr
    assert [(r["run_id"], r["n"]) for r in json.loads(sql.stdout)] == [
        ("ra", 130),
        ("rb", 260),
    ]  # 13 samples a tick
    report = run_cli("report", "job-a", "--db", str(nodes / "*.duckdb"), "--json")
    assert report.returncode == 0, report.stderr
    body = json.loads(report.stdout)
    assert body["run"] == "ra" and body["summary"]["duration_s"] == 10
    latest = run_cli("report", "--db", str(nodes / "*.duckdb"), "--json")
    assert json.loads(latest.stdout)["run"] == "rb"  # the latest over all files


def test_the_same_file_twice_is_read_once_and_a_copied_run_once_with_one_line(tmp_path):
    nodes, a, b = _nodes(tmp_path)
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(a.read_bytes())
    done = run_cli("sql", "SELECT count(*) AS n FROM samples", "--db", str(a), "--db", str(a),
                   "--db", str(copy), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"n": 130}]
    assert done.stderr.count("\n") == 1 and "run ra is in" in done.stderr


def test_a_glob_matching_nothing_is_one_line_and_exit_4(tmp_path):
    for command in (["runs"], ["report"], ["sql", "SELECT 1"], ["view"], ["compare", "a", "b"]):
        done = run_cli(*command, "--db", str(tmp_path / "none-*.duckdb"))
        assert done.returncode == 4, (command, done.stderr)
        assert done.stderr.count("\n") == 1 and "no database matches" in done.stderr


def test_a_database_being_written_is_skipped_with_one_line_and_the_rest_is_read(tmp_path):
    nodes, a, b = _nodes(tmp_path)
    writer = connect(b)  # holds the file's write lock, as a recording agent does
    try:
        done = run_cli("runs", "--db", str(nodes / "*.duckdb"), "--json")
    finally:
        writer.close()
    assert done.returncode == 0, done.stderr
    assert [r["run_id"] for r in json.loads(done.stdout)] == ["ra"]
    assert done.stderr.count("\n") == 1 and f"skipping {b}" in done.stderr


def test_a_damaged_file_among_several_is_one_line_and_exit_4(tmp_path):
    nodes, a, b = _nodes(tmp_path)
    (nodes / "c.duckdb").write_bytes(a.read_bytes()[:6000])
    done = run_cli("runs", "--db", str(nodes / "*.duckdb"))
    assert done.returncode == 4 and done.stderr.count("\n") == 1, done.stderr
    assert "c.duckdb" in done.stderr


def test_the_viewer_reads_a_run_over_several_databases(tmp_path):
    nodes, a, b = _nodes(tmp_path)
    reader = RecordedReader.open([str(a), str(b)], "job-b")
    try:
        assert reader.run.run_id == "rb" and len(reader.ticks) == 20
        frame = reader.frame(60)
        assert frame is not None and ("gpu0", "gpu.utilization") in frame.snapshot.values
    finally:
        reader.close()
    done = run_cli("view", "--db", str(nodes / "*.duckdb"), "nope")
    assert done.returncode == 2 and "no run 'nope'" in done.stderr
