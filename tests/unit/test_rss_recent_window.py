"""The live analysis' recent window shares the recording's DuckDB instance (one instance, not
two, in the agent's process), gives its memory back after each pass, and never holds up the
store's writer."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest

import agent.analysis.live as live_module
from agent.analysis.live import LiveAnalysis
from agent.analysis.recent import RecentWindow
from agent.model import BatchBuilder
from agent.snapshot import SnapshotHub
from agent.store import Store
from tests.analysis.test_live import fake_session
from tests.helpers import wait_until

T0 = time.time() - 91


def _tick(i: int, procs: int = 200) -> list:
    b = BatchBuilder("process", T0 + i)
    for e in range(procs):
        for m in ("process.cpu.utilization", "process.memory.rss", "process.io.read_bytes"):
            b.add(str(e), m, float((i * e) % 7))
    return [b.build()]


def _recorded(store: Store, ticks: int = 60, procs: int = 200) -> LiveAnalysis:
    session = fake_session(store)
    live = LiveAnalysis()
    live.attach(session.context)
    for i in range(ticks):
        batches = _tick(i, procs)
        store.write_ticks([("run-1", batches)])
        session.hub.publish(T0 + i, batches, {})
    live.poll()  # takes the queued ticks into the window
    return live


def _window_memory(con: duckdb.DuckDBPyConnection) -> float:
    """Bytes DuckDB holds for in-memory and temporary tables (the window's and the frames')."""
    rows = con.execute(
        "SELECT tag, memory_usage_bytes FROM duckdb_memory() "
        "WHERE tag IN ('IN_MEMORY_TABLE', 'TEMPORARY_TABLE' )"
    ).fetchall()
    return float(sum(b for _, b in rows))


def _held(con: duckdb.DuckDBPyConnection) -> float:
    """Bytes DuckDB holds besides tables (cached file blocks, transactions...)."""
    rows = con.execute(
        "SELECT sum(memory_usage_bytes) FROM duckdb_memory() "
        "WHERE tag NOT IN ('IN_MEMORY_TABLE', 'TEMPORARY_TABLE')"
    ).fetchall()
    return float(rows[0][0] or 0)


def test_recent_window_is_a_database_on_the_recordings_instance(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    live = _recorded(store)
    assert live.recent is not None and live.recent.name is not None
    databases = {
        r[0]
        for r in store.cursor().execute("SELECT database_name FROM duckdb_databases()").fetchall()
    }
    assert live.recent.name in databases  # attached to the store's own instance
    path = (
        store.cursor()
        .execute("SELECT path FROM duckdb_databases() WHERE database_name = ?", [live.recent.name])
        .fetchone()[0]
    )
    assert path is None  # in memory: the window's tables stay out of the recording's file
    assert live.run_once() is not None
    assert store.cursor().execute("SELECT count(*) FROM samples").fetchone()[0] == 60 * 600
    name = live.recent.name
    live.stop()
    databases = {
        r[0]
        for r in store.cursor().execute("SELECT database_name FROM duckdb_databases()").fetchall()
    }
    assert name not in databases  # detached at stop
    store.close()


def test_recent_window_gives_its_memory_back_after_a_pass(tmp_path, monkeypatch):
    store = Store(tmp_path / "a.duckdb")
    live = _recorded(store, ticks=90, procs=300)
    assert live.recent is not None
    con = live.recent.con
    before = _window_memory(con)
    during: list[float] = []
    real_analyze = live_module.analyze

    def measured(con, *args, **kwargs):
        found = real_analyze(con, *args, **kwargs)
        during.append(_window_memory(con))
        return found

    monkeypatch.setattr(live_module, "analyze", measured)
    live.run_once()
    assert during and during[0] > before + 1_000_000  # a pass's window and frames take memory
    assert _window_memory(con) <= before + 64 * 1024  # ... and none once it is over
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 0
    temp = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = 'temp'")
    assert temp.fetchone()[0] == 0  # the frames' temporary tables are dropped
    live.stop()
    store.close()


def test_recent_window_is_compressed_once_loaded(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    live = _recorded(store, ticks=90, procs=300)
    assert live.recent is not None
    con = live.recent.con
    live.recent.load(T0, T0 + 90)
    compressed = con.execute(
        "SELECT count(*) FROM pragma_storage_info('sample_values') "
        "WHERE column_name = 'metric' AND compression <> 'Uncompressed'"
    ).fetchone()[0]
    assert compressed >= 1
    live.stop()
    store.close()


def test_recent_window_without_a_recording_instance_opens_its_own():
    for opener in (None, lambda: None):
        window = RecentWindow("run-1", keep_s=60.0, open_cursor=opener)
        assert window.name is None
        hub = SnapshotHub()
        hub.publish(T0, _tick(0, procs=3), {})
        assert hub.latest is not None
        window.add(hub.latest)
        window.load(T0 - 1, T0 + 1)
        assert window.con.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
        window.release()
        window.close()


def test_recent_window_follows_the_store_reopening_its_file(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    live = _recorded(store)
    assert live.recent is not None
    first = live.recent.name
    store._reopen()  # what the writer does after a fatal error (the old instance is closed)
    live.cursor = store.cursor()
    assert live.run_once() is not None
    assert live.recent.name != first
    databases = {
        r[0]
        for r in store.cursor().execute("SELECT database_name FROM duckdb_databases()").fetchall()
    }
    assert live.recent.name in databases
    live.stop()
    store.close()


def test_store_writer_keeps_committing_and_checkpointing_while_an_analysis_pass_runs(
    tmp_path, monkeypatch
):
    store = Store(tmp_path / "a.duckdb", flush_interval=0.05)
    live = _recorded(store, ticks=30)
    # Checkpoint after every flush, so checkpoints of the file happen during the pass too.
    monkeypatch.setattr("agent.store_writer.AGENT_DB_CHECKPOINT_BYTES", 0)
    in_pass = threading.Event()
    release = threading.Event()
    real_analyze = live_module.analyze

    def slow_analyze(con, *args, **kwargs):
        found = real_analyze(con, *args, **kwargs)
        # hold the pass open on the window's cursor, mid-query, like a slow rule would
        con.execute("BEGIN")
        con.execute("SELECT count(*) FROM samples, range(100)").fetchall()
        in_pass.set()
        release.wait(10)
        con.execute("COMMIT")
        return found

    monkeypatch.setattr(live_module, "analyze", slow_analyze)
    store.start()
    done = threading.Event()

    def feed() -> None:
        i = 30
        while not done.is_set():
            store.submit("run-1", _tick(i, procs=50))
            i += 1
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    analysis = threading.Thread(target=live.run_once, daemon=True)
    analysis.start()
    assert in_pass.wait(20)
    flushes = store.flushes
    wal = tmp_path / "a.duckdb.wal"
    sizes: list[int] = []

    def wal_size() -> int:
        # a checkpoint removes the WAL file: between exists() and stat() it may go
        try:
            sizes.append(wal.stat().st_size)
        except FileNotFoundError:
            sizes.append(0)
        return sizes[-1]

    # the writer commits while the pass holds its transaction open ...
    assert wait_until(
        lambda: wal_size() >= 0 and store.flushes >= flushes + 5, timeout=10, step=0.005
    )
    assert store.state == "ok" and store.failures == 0, store.last_error
    # ... and checkpoints: the WAL shrank (a blocked checkpoint would leave it growing)
    assert any(later < earlier for earlier, later in zip(sizes, sizes[1:])), sizes
    release.set()
    analysis.join(20)
    assert not analysis.is_alive()
    done.set()
    feeder.join()
    store.close_writer()
    seen = store.cursor().execute("SELECT count(DISTINCT ts) FROM samples").fetchone()[0]
    assert seen > 30 + 5
    live.stop()
    store.close()


def test_failed_checkpoint_of_the_window_replaces_the_window_and_not_the_recording(
    tmp_path, monkeypatch
):
    store = Store(tmp_path / "a.duckdb")
    live = _recorded(store, ticks=90, procs=300)
    window = live.recent
    assert window is not None
    first = window.name
    real_entities = RecentWindow._load_entities

    def then_squeezed(self, items):
        real_entities(self, items)
        # the instance's memory runs out between loading the window and compressing it: a
        # third of what it holds (the rest goes to its temporary files), too little for the
        # checkpoint to pin what it reads and writes
        used = _window_memory(self.con) + _held(self.con)
        store.con.execute(f"SET memory_limit = '{int(used * 0.35 // 1024)}KiB'")

    monkeypatch.setattr(RecentWindow, "_load_entities", then_squeezed)
    with pytest.raises(duckdb.OutOfMemoryException, match="recent window checkpoint"):
        window.load(T0, T0 + 90)
    monkeypatch.undo()
    store.con.execute("SET memory_limit = '32MB'")
    window.load(T0, T0 + 90)  # the next load starts on a new window database, which works
    assert window.name != first
    assert window.con.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
    # the recording's database was not invalidated: it writes and reads on
    assert store.write_ticks([("run-1", _tick(90, procs=300))]) == 900
    assert store.cursor().execute("SELECT count(DISTINCT ts) FROM samples").fetchone()[0] == 91
    live.stop()
    store.close()
