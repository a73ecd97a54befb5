"""The agent's DuckDB is capped: analysis that runs out of memory degrades, writes go on."""

from __future__ import annotations

import time

import pytest

from agent.analysis.live import DEFAULT_WINDOW_S, MIN_WINDOW_S, LiveAnalysis
from agent.model import BatchBuilder
from agent.store import Store
from tests.analysis.test_live import fake_session

T0 = time.time() - 91


def _tick(i: int, procs: int = 500) -> list:
    b = BatchBuilder("process", T0 + i)
    for e in range(procs):
        for m in ("process.cpu.utilization", "process.memory.rss", "process.io.read_bytes"):
            b.add(str(e), m, float((i * e) % 7))
    return [b.build()]


def test_live_analysis_out_of_memory_halves_its_window_and_is_counted(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    session = fake_session(store)
    live = LiveAnalysis()
    live.attach(session.context)
    for i in range(90):
        batches = _tick(i)
        store.write_ticks([("run-1", batches)])
        session.hub.publish(T0 + i, batches, {})
    assert live.schedule is not None
    live.schedule.full_period_s = 0.0  # every wake-up runs every rule
    live.schedule.full_pass_every_rule = True
    assert live.poll() is not None and live.oom_passes == 0  # fits in the window's 32 MB
    assert live.recent is not None
    # Memory pressure: the window shares the recording's instance, whose limit now leaves room
    # for a write but not for a pass.
    store.con.execute("SET memory_limit = '14MB'")
    for n in (1, 2, 3):
        live.poll_safely()
        assert live.oom_passes == n
    assert live.window_s == max(MIN_WINDOW_S, DEFAULT_WINDOW_S / 8)
    health = live.context.health
    assert health["analysis.oom_passes"] == 3 and "analysis.last_error" not in health
    # The recording's own writes go on, and nothing was invalidated.
    assert store.write_ticks([("run-1", _tick(90))]) == 1500
    assert store.cursor().execute("SELECT count(DISTINCT ts) FROM samples").fetchone()[0] == 91
    live.stop()
    store.close()


def test_writes_failing_for_memory_are_buffered_and_retried(tmp_path):
    lines: list[str] = []
    store = Store(tmp_path / "a.duckdb", flush_interval=0.1, report=lines.append)
    store.con.execute("SET memory_limit = '300KB'")
    store.start()
    for i in range(5):
        store.submit("run-1", _tick(i, procs=2000))
    from tests.helpers import wait_until

    assert wait_until(lambda: store.state.startswith("out of memory"), timeout=10), store.state
    # memory_limit is the instance's: set it on a cursor of our own, never on the connection the
    # writer's thread is using (DuckDB refuses a connection used by two threads at once).
    other = store.cursor()
    other.execute("SET memory_limit = '32MB'")
    other.close()
    assert wait_until(lambda: store.state == "ok", timeout=20), store.state
    store.close()
    from tests.helpers import query

    assert query(store.path, "SELECT count(DISTINCT ts) FROM samples")[0][0] == 5
    assert store.lost_ticks == 0 and len(lines) == 2


def _transaction_kb(store: Store) -> int:
    rows = (
        store.cursor()
        .execute("SELECT memory_usage_bytes // 1024 FROM duckdb_memory() WHERE tag = 'TRANSACTION'")
        .fetchall()
    )
    return int(rows[0][0]) if rows else 0


def test_heartbeats_between_flushes_hold_no_transaction_memory_after_a_checkpoint(
    tmp_path, monkeypatch
):
    """The heartbeat is appended, not updated: once the block cache had been released after a
    checkpoint (``SET memory_limit`` low and back), an ``UPDATE`` between appends made DuckDB
    keep every later flush's rows as transaction memory until the next checkpoint (~2 MB per
    MB of WAL: ~9 MB of the agent's resident memory at a checkpoint's eve)."""
    import agent.store_memory
    from agent.model import RunInfo

    monkeypatch.setattr(agent.store_memory, "RELEASE_MIN_CACHED_BYTES", 0)
    store = Store(tmp_path / "a.duckdb")
    store.write_run(RunInfo("r", "job", 1, ["job"], "/", "h", T0, 1.0, str(store.path)))
    store.write_ticks([("r", _tick(0))])
    store.con.execute("CHECKPOINT")  # what the first 4 MB of WAL bring, and then
    store._release_cache()  # the writer's release of DuckDB's block cache
    for i in range(1, 61):  # a heartbeat with every flush of 1,500 values
        store.write_ticks([("r", _tick(i))], beat=True)
    assert _transaction_kb(store) < 1024  # 15 MB with the UPDATE
    (beats, heartbeat) = (
        store.cursor()
        .execute("SELECT (SELECT count(*) FROM run_heartbeat), epoch(last_sample) FROM runs")
        .fetchone()
    )
    assert beats > 60 and heartbeat == pytest.approx(T0 + 60, abs=1e-5)  # the newest beat
    store.close()


def test_a_file_whose_runs_view_read_one_updated_heartbeat_gets_the_newest_of_many(tmp_path):
    """Files written before Dec 2026 hold one updated heartbeat row per run and a ``runs`` view
    that joined it as is; opened for writing, the view reads each run's newest beat."""
    from agent.model import RunInfo
    from agent.store import connect

    path = tmp_path / "a.duckdb"
    con = connect(path)
    con.execute(
        "CREATE OR REPLACE VIEW runs AS SELECT r.*, h.heartbeat, h.last_sample FROM run_log r "
        "LEFT JOIN run_heartbeat h USING (run_id)"
    )
    con.close()
    store = Store(path)
    store.write_run(RunInfo("r", "job", 1, ["job"], "/", "h", T0, 1.0, str(path)))
    for i in range(3):
        store.write_ticks([("r", _tick(i, procs=2))], beat=True)
    rows = store.cursor().execute("SELECT epoch(last_sample) FROM runs").fetchall()
    assert len(rows) == 1 and rows[0][0] == pytest.approx(T0 + 2, abs=1e-5)
    store.close()
