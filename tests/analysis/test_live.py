"""Live analysis: the same rules over the last window while a run records."""

from __future__ import annotations

import time
from types import SimpleNamespace

from agent.analysis.finding import load_findings
from agent.analysis.live import LiveAnalysis, LiveFindingLog
from agent.context import LiveContext
from agent.model import RunInfo
from agent.snapshot import SnapshotHub
from agent.store import Store
from tests.analysis.recording import T0, Recording, record


def fake_session(
    store: Store, run_id: str = "run-1", hub: SnapshotHub | None = None, *, sampler: bool = False
) -> SimpleNamespace:
    """A recording's live context over ``store``; with ``sampler``, a sampler CPU counter."""
    run = RunInfo(run_id, "live", 4242, [], "/", "test", T0, 1.0, str(store.path))
    session = SimpleNamespace(store=store, run=run, hub=hub or SnapshotHub())
    session.sampler = SimpleNamespace(stats=SimpleNamespace(cpu_seconds=0.0))
    session.context = LiveContext(
        run,
        session.hub,
        note=lambda *a, **k: None,
        open_cursor=store.cursor,
        sampler_cpu_seconds=(lambda: session.sampler.stats.cpu_seconds) if sampler else None,
    )
    return session


def test_hang_is_flagged_live_within_a_minute(tmp_path):
    hub = SnapshotHub()
    live = LiveAnalysis()
    flagged_at: list[float] = []

    def on_tick(now: float, store: Store) -> None:
        if live.context is None:
            live.attach(fake_session(store, hub=hub).context)
        current = live.poll()
        if current and any(f.rule == "hang" for f in current) and not flagged_at:
            flagged_at.append(now - T0)
            assert live.context.findings[0]["rule"] == "hang"

    record(tmp_path / "live.duckdb", Recording("hang", 70), on_tick=on_tick, hub=hub)
    assert flagged_at, "hang never flagged live"
    assert 20 + 30 <= flagged_at[0] <= 20 + 40  # the deadlock starts at 20 s; 30 s minimum
    assert live.context.health["analysis.cycles"] == live.cycles >= 1
    live.stop()


def test_live_findings_are_stored_and_extended_while_the_problem_lasts(tmp_path):
    hub = SnapshotHub()
    live = LiveAnalysis()
    starts = set()

    def on_tick(now: float, store: Store) -> None:
        if live.context is None:
            live.attach(fake_session(store, "run-1", hub=hub).context)
        live.poll()
        if round(now - T0) in (44, 48, 52, 56):  # full passes over the recent window
            live.run_once()
            starts.update(
                (f["entity"], f["start_ts"])
                for f in live.context.findings
                if f["rule"] == "throttling"
            )

    path, run_id = record(
        tmp_path / "t.duckdb", Recording("throttled-thermal", 60), on_tick=on_tick, hub=hub
    )
    live.stop()
    # the window slides, but a lasting problem keeps the start of its episode
    assert len(starts) == 2
    store = Store(path)
    stored = [f for f in load_findings(store.con, run_id, live=True) if f.rule == "throttling"]
    assert {f.entity for f in stored} == {"gpu2", "gpu3"}
    assert all(f.live for f in stored)
    # one finding per GPU, stretched over the analyses, not one copy per analysis
    assert len(stored) == 2 and all(f.duration_s >= 20 for f in stored)
    assert load_findings(store.con, run_id, live=False) == []
    store.close()


def test_finding_log_closes_an_episode_that_stopped():
    from datetime import datetime, timedelta

    from agent.analysis.finding import Finding

    t = datetime(2024, 1, 1)

    def f(start: int, end: int) -> Finding:
        return Finding(
            "hang",
            "warning",
            "job",
            t + timedelta(seconds=start),
            t + timedelta(seconds=end),
            "s",
            "n",
            live=True,
        )

    log = LiveFindingLog(join_gap_s=10)
    log.update([f(0, 30)])
    log.update([f(5, 35)])
    assert len(log.update([])) == 1
    assert [(x.start, x.end) for x in log.update([f(100, 130)])] == [
        (t, t + timedelta(seconds=35)),
        (t + timedelta(seconds=100), t + timedelta(seconds=130)),
    ]


def test_consumer_thread_publishes_and_stops(tmp_path):
    taken: list = []
    recorder_hub = SnapshotHub()
    recorder_hub.subscribe(taken.append)
    path, run_id = record(tmp_path / "c.duckdb", Recording("hang", 60), hub=recorder_hub)
    store = Store(path)
    session = fake_session(store, run_id)
    live = LiveAnalysis()
    live.start(session.context)
    for snap in taken:  # the ticks again, as the sampler publishes them
        session.hub.publish(snap.ts, list(snap.batches), {})
    deadline = time.monotonic() + 10
    while not session.context.findings and time.monotonic() < deadline:
        time.sleep(0.05)
    live.stop()
    assert session.context.findings[0]["rule"] == "hang"
    assert set(session.context.findings[0]) >= {
        "rule",
        "severity",
        "entity",
        "summary",
        "evidence",
        "next_step",
        "start_ts",
        "end_ts",
    }
    assert store.con.execute("SELECT count(*) FROM findings WHERE live").fetchone()[0] >= 1
    store.close()
