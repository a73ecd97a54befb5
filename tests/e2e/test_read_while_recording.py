"""Readers are never locked out: while a real agent records, every read command works through
its socket (``<db>.sock``), refuses writes, and serves nobody but the same user."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, accelwatch, run_cli, wait_until

JOB = "import time\nwhile True:\n    time.sleep(0.05)\n"


def _count(db: str) -> int:
    result = run_cli("sql", "SELECT count(*) AS n FROM samples", "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]["n"]


@pytest.fixture(scope="module")
def recording() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real agent recording a sleep loop into a database in a directory others may enter."""
    shared = tempfile.mkdtemp(prefix="accelwatch-read-")
    os.chmod(shared, 0o755)
    db = os.path.join(shared, "live.duckdb")
    env = {k: v for k, v in os.environ.items() if k != "ACCELWATCH_DB"}
    agent = subprocess.Popen(
        [
            *accelwatch("run", "--headless", "--db", db, "--interval", "0.2"),
            *("--name", "live-job", "--tag", "team=ml", "--"),
            *(sys.executable, "-c", JOB),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert wait_until(lambda: os.path.exists(db + ".sock"), timeout=30), "no read socket"
        assert wait_until(lambda: _count(db) > 0, timeout=30), "no samples flushed"
        yield db, agent
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        shutil.rmtree(shared, ignore_errors=True)


def test_the_database_file_itself_stays_locked_while_recording(recording):
    """What a user's own duckdb cannot do (the reason for the socket)."""
    import duckdb

    db, _ = recording
    with pytest.raises(duckdb.Error, match="(?i)lock"):
        duckdb.connect(db, read_only=True)


def test_sql_sees_the_live_runs_samples_growing(recording):
    db, _ = recording
    first = _count(db)
    assert wait_until(lambda: _count(db) > first, timeout=15)
    table = run_cli("sql", "SELECT count(*) AS n FROM samples", "--db", db)
    assert table.returncode == 0 and table.stdout.splitlines()[0].strip() == "n"
    rows = run_cli("sql", "SELECT name, status FROM runs", "--db", db, "--csv")
    assert rows.returncode == 0, rows.stderr
    assert list(csv.reader(io.StringIO(rows.stdout))) == [
        ["name", "status"],
        ["live-job", "running"],
    ]


def test_runs_and_report_read_a_database_being_recorded(recording):
    db, _ = recording
    runs = run_cli("runs", "--db", db, "--json")
    assert runs.returncode == 0, runs.stderr
    (run,) = json.loads(runs.stdout)
    assert run["status"] == "running" and run["tags"] == {"team": "ml"}
    assert isinstance(run["env"], dict)
    text = run_cli("runs", "--db", db)
    assert text.returncode == 0 and "live-job" in text.stdout
    report = run_cli("report", "--db", db, "--json")
    assert report.returncode == 0, report.stderr
    body = json.loads(report.stdout)
    assert body["findings_from"] == "live" and body["summary"]["status"] == "running"
    assert body["summary"]["duration_s"] > 0
    html = run_cli("report", "--db", db, "--format", "html")
    assert html.returncode == 0 and "Charts appear once the recording ends" in html.stdout


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ("DELETE FROM samples", "not DELETE"),
        ("CREATE TABLE stolen AS SELECT * FROM samples", "not CREATE"),
        ("SELECT 1; DELETE FROM samples", "one statement per query, got 2"),
        ("EXPLAIN ANALYZE DELETE FROM samples", "not EXPLAIN"),
        ("COPY samples TO '/tmp/accelwatch-stolen.csv'", "not COPY"),
    ],
)
def test_write_statements_are_refused_in_one_line_and_change_nothing(recording, statement, reason):
    db, _ = recording
    before = _count(db)
    result = run_cli("sql", statement, "--db", db)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip()
    ] and result.stderr.startswith("accelwatch: error: sql: ")
    assert reason in result.stderr
    assert _count(db) >= before
    tables = run_cli("sql", "SELECT table_name FROM duckdb_tables()", "--db", db, "--json")
    assert "stolen" not in tables.stdout


def test_the_server_refuses_what_the_parser_rejects_even_from_a_raw_client(recording):
    """The agent checks every request itself (a client may skip the CLI's check)."""
    from agent.readclient import QueryError, connect_agent

    db, _ = recording
    con = connect_agent(db)
    try:
        with pytest.raises(QueryError, match="not DELETE"):
            con.execute("DELETE FROM samples")
        with pytest.raises(QueryError, match="not CREATE"):
            con.execute("CREATE TEMP TABLE t AS SELECT 1")
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
    finally:
        con.close()


def test_read_socket_is_0600_and_another_user_cannot_connect(recording):
    db, _ = recording
    mode = os.stat(db + ".sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    probe = (
        "import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('denied')\n"
        "else:\n    print('connected')\n"
    )
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    raw = subprocess.run(
        [*as_nobody, sys.executable, "-c", probe, db + ".sock"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert raw.stdout.strip() == "denied", raw.stderr
    cli = subprocess.run(
        [*as_nobody, *accelwatch("sql", "SELECT count(*) FROM samples", "--db", db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HOME": "/tmp"},
    )
    assert cli.returncode == 4, cli.stderr
    assert cli.stdout == "" and len(cli.stderr.strip().splitlines()) == 1


def test_peer_of_another_uid_is_refused_by_the_server():
    """SO_PEERCRED is checked even if the socket's mode were wrong (belt and braces)."""
    import socket

    from agent.readserver import ReadServer

    class Context:
        def cursor(self):
            raise AssertionError("a refused peer must not reach the database")

        def note(self, *a, **k):
            raise AssertionError(a)

    with tempfile.TemporaryDirectory() as tmp:
        server = ReadServer(os.path.join(tmp, "x.duckdb"))
        real_uid = os.getuid
        server.start(Context())  # type: ignore[arg-type]
        try:
            os.getuid = lambda: real_uid() + 1  # the server now sees a foreign peer
            client = socket.socket(socket.AF_UNIX)
            client.connect(server.path)
            # the server may already have answered and closed: the request then meets EPIPE
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                client.sendall(b'{"sql": "SELECT 1"}\n')
            reply = json.loads(client.makefile("rb").readline())
            client.close()
        finally:
            os.getuid = real_uid
            server.stop()
        assert reply == {"ok": False, "error": "another user's recording"}
        assert not os.path.exists(server.path)


def test_view_of_a_run_being_recorded_follows_new_ticks(recording):
    from agent.recorded import RecordedReader

    db, _ = recording
    reader = RecordedReader.open(db)
    woken: list[float] = []
    try:
        assert reader.following and reader.run.name == "live-job"
        start = len(reader.ticks)
        assert reader.cursor == start - 1
        reader.subscribe(lambda: woken.append(time.monotonic()))
        assert wait_until(lambda: woken and len(reader.ticks) > start, timeout=15)
        assert reader.cursor == len(reader.ticks) - 1  # a cursor at the end stays at the end
        frame = reader.frame(60)
        assert frame is not None and frame.snapshot.ts == reader.cursor_ts
    finally:
        reader.close()


def test_readers_get_the_file_back_once_the_recording_ends(tmp_path):
    db = str(tmp_path / "short.duckdb")
    result = run_cli(
        "run", "--headless", "--db", db, "--interval", "0.2", "--", sys.executable, "-c", "pass"
    )
    assert result.returncode == 0, result.stderr
    assert not Path(db + ".sock").exists()
    runs = run_cli("runs", "--db", db, "--json")
    assert runs.returncode == 0 and json.loads(runs.stdout)[0]["status"] == "finished"


def test_runs_columns_stay_aligned_with_wide_cjk_names(tmp_path):
    """Columns are measured in terminal cells: a wide (CJK) character takes two."""
    import time as clock

    from agent.app.read_commands import display_width
    from agent.model import RunInfo
    from agent.store import Store

    db = tmp_path / "cjk.duckdb"
    store = Store(db)
    now = clock.time()
    for i, name in enumerate(["train-ascii", "训练任务-日本語のジョブ名前", "ｆｕｌｌｗｉｄｔｈ"]):
        store.write_run(
            RunInfo(
                run_id=f"run-{i}", name=name, pid=100 + i, cmdline=["python"], cwd="/",
                host="h", started=now + i, interval=1.0, db_path=str(db), tags={"k": "v"},
                env={}, mode="run", simulated=False, scenario=None, ended=now + i + 1,
                exit_code=0, status="finished",
            )
        )  # fmt: skip
    store.close()
    result = run_cli("runs", "--db", str(db))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    columns = {
        display_width(line[: line.index(word)])
        for line, word in zip(lines, ["MODE", *["run "] * 3])
    }
    assert len(columns) == 1, lines
    status_columns = {
        display_width(line[: line.index(w)])
        for line, w in zip(lines, ["STATUS", *["finished"] * 3])
    }
    assert len(status_columns) == 1, lines


def test_view_following_a_run_takes_the_file_over_when_the_recording_ends(tmp_path):
    from agent.recorded import RecordedReader

    db = str(tmp_path / "ends.duckdb")
    done = tmp_path / "done"
    job = f"import os, time\nwhile not os.path.exists({str(done)!r}):\n    time.sleep(0.05)\n"
    env = {k: v for k, v in os.environ.items() if k != "ACCELWATCH_DB"}
    agent = subprocess.Popen(
        [
            *accelwatch("run", "--headless", "--db", db, "--interval", "0.2", "--"),
            *(sys.executable, "-c", job),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    try:
        assert wait_until(lambda: os.path.exists(db + ".sock"), timeout=30)
        assert wait_until(lambda: _count(db) > 0, timeout=30)
        reader = RecordedReader.open(db)
        try:
            assert reader.following
            reader.subscribe(lambda: None)
            done.touch()  # the job ends while the view follows the run
            assert wait_until(lambda: reader.run.ended is not None, timeout=60)
            assert not reader.following and reader.run.status == "finished"
            assert reader.cursor == len(reader.ticks) - 1
            assert reader.frame(60) is not None  # still answers, now from the file
        finally:
            reader.close()
    finally:
        done.touch()
        agent.wait(timeout=60)


def test_a_slow_query_is_interrupted_and_a_huge_result_refused():
    """A reader cannot hold the recording's database: a per-query timeout (interrupt) and a
    bounded result."""
    import duckdb

    from agent.readserver import run_query

    con = duckdb.connect()
    try:
        started = time.monotonic()
        slow = run_query(
            con.cursor, "SELECT count(*) FROM range(1000000000000) a", [], timeout_s=0.5
        )
        assert slow == {"ok": False, "error": "query interrupted after 0.5 s"}
        assert time.monotonic() - started < 10
        big = run_query(con.cursor, "SELECT * FROM range(100000)", [], max_rows=1000)
        assert not big["ok"] and "result too large" in big["error"]
        fine = run_query(con.cursor, "SELECT 41 + ? AS n", [1])
        assert fine == {"ok": True, "columns": ["n"], "types": ["INTEGER"], "rows": [[42]]}
    finally:
        con.close()
