"""The agent's DuckDB is capped: analysis that runs out of memory degrades, writes go on."""

from __future__ import annotations

import time

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
