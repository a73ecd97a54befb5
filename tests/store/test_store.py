"""The DuckDB store: file mode, schema versioning, refusal of foreign files, durability."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import duckdb
import pytest

from agent.errors import StoreError, StoreInUseError
from agent.model import BatchBuilder
from agent.store import SCHEMA_VERSION, Store, connect


def _batch(ts: float, n: int = 3, source: str = "host"):
    b = BatchBuilder(source, ts)
    for i in range(n):
        b.add(f"e{i}", "host.cpu.utilization", i / 10)
    b.event("process_start", "e0", cmdline=["x"])
    b.describe("e0", role="main")
    return b.build()


def test_new_database_is_private_and_versioned(tmp_path):
    path = tmp_path / "a.duckdb"
    con = connect(path)
    version = con.execute(
        "SELECT value FROM accelwatch_meta WHERE key='schema_version'"
    ).fetchone()[0]
    con.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert int(version) == SCHEMA_VERSION


def test_closing_leaves_only_the_database_beside_it(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    store.write_ticks([("r1", [_batch(1000.0)])])
    assert (tmp_path / "a.duckdb.tmp").is_dir()  # private spill directory while open
    store.close()
    assert sorted(os.listdir(tmp_path)) == ["a.duckdb"]


def test_samples_events_and_entities_round_trip(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    store.write_ticks([("r1", [_batch(1000.0)]), ("r1", [_batch(1001.0)])])
    con = store.cursor()
    rows = con.execute(
        "SELECT epoch(ts), entity, metric, value FROM samples WHERE run_id='r1' ORDER BY ts, entity"
    ).fetchall()
    assert len(rows) == 6
    assert rows[0] == (1000.0, "e0", "host.cpu.utilization", 0.0)
    assert rows[-1][3] == pytest.approx(0.2)
    kinds = con.execute("SELECT kind, count(*) FROM events GROUP BY ALL").fetchall()
    assert kinds == [("process_start", 2)]
    attrs = con.execute(
        "SELECT attrs, epoch(first_seen), epoch(last_seen) FROM entities"
    ).fetchone()
    assert attrs == ('{"role": "main"}', 1000.0, 1001.0)
    store.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "a.duckdb"
    connect(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE accelwatch_meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="newer accelwatch"):
        connect(path)


def test_foreign_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("my precious notes\n" * 10)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not an accelwatch/DuckDB database"):
        connect(path)
    assert path.read_bytes() == before


def test_other_duckdb_database_is_refused(tmp_path):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE precious(a INT)")
    con.close()
    with pytest.raises(StoreError, match="not an accelwatch one"):
        connect(path)


def test_unwritable_directory_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        connect(tmp_path / "missing" / "a.duckdb")


def test_second_writer_gets_in_use_error(tmp_path):
    path = tmp_path / "a.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from agent.store import connect
            con = connect({str(path)!r})
            print("open", flush=True)
            sys.stdin.readline()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreInUseError, match="in use by another accelwatch agent"):
            connect(path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_full_queue_drops_oldest_tick_instead_of_blocking(tmp_path):
    store = Store(tmp_path / "a.duckdb", max_pending_ticks=3)
    for i in range(10):  # writer not started: the queue fills up
        store.submit("r", [_batch(float(i))])
    assert store.dropped_ticks == 7
    store.start()
    store.close()
    con = connect(tmp_path / "a.duckdb", read_only=True)
    kept = con.execute("SELECT DISTINCT epoch(ts) FROM samples ORDER BY 1").fetchall()
    assert [r[0] for r in kept] == [7.0, 8.0, 9.0]


def test_the_writer_wakes_once_a_flush_not_once_a_tick(tmp_path):
    """A queued tick wakes nobody: the writer takes every tick at its flush (a thread's
    wake-up costs the agent more than the hand-over itself)."""
    import time

    store = Store(tmp_path / "a.duckdb", flush_interval=1.0)
    started = time.monotonic()
    store.start()
    for i in range(20):  # 1 s of ticks at 20 Hz
        store.submit("r", [_batch(float(i))])
        time.sleep(0.05)
    time.sleep(1.2)
    flushes_due = int(time.monotonic() - started) + 1  # however slow the machine is
    assert store.wakeups <= flushes_due < 20  # one a tick before
    assert store.rows_written == 20 * 3
    store.close()


def test_closing_flushes_at_once_without_waiting_for_the_flush(tmp_path):
    import time

    store = Store(tmp_path / "a.duckdb", flush_interval=2.0)
    store.start()
    store.submit("r", [_batch(1.0)])
    started = time.monotonic()
    store.close_writer()
    assert time.monotonic() - started < 1.0
    assert store.rows_written == 3
    store.close()


def test_kill_9_loses_at_most_the_last_flush_interval(tmp_path):
    path = tmp_path / "a.duckdb"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from agent.model import BatchBuilder
            from agent.store import Store
            store = Store({str(path)!r}, flush_interval=0.5)
            store.start()
            i = 0
            while True:
                b = BatchBuilder("host", 1000.0 + i)
                b.add("host", "host.cpu.utilization", 0.5)
                store.submit("r", [b.build()])
                print(i, flush=True)
                i += 1
                time.sleep(0.05)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    last = -1
    for line in writer.stdout:
        last = int(line)
        if last >= 40:
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    con = connect(path, read_only=True)
    stored = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    # 0.5 s flush interval at 20 ticks/s: at most ~10 ticks (plus one in flight) may be lost.
    assert last + 1 - stored <= 12
    assert stored >= 25
