"""Live: per-rank step times (source ``steps``, entity ``rankN``, as the client writes them)
reach the live straggler rule, which flags a rank within a minute of it slowing down."""

from __future__ import annotations

import numpy as np

from agent.analysis.live import LiveAnalysis
from agent.catalog.steps import SOURCE, rank_entity
from agent.context import LiveContext
from agent.model import BatchBuilder, RunInfo
from agent.snapshot import SnapshotHub
from agent.store import Store
from tests.analysis.recording import T0

RANKS = 8


def live_analysis(store: Store, run: RunInfo, hub: SnapshotHub) -> LiveAnalysis:
    context = LiveContext(run, hub, note=lambda *a, **k: None, open_cursor=store.cursor)
    live = LiveAnalysis(window_s=60)
    if hasattr(live, "attach"):  # a scheduler fed by the snapshots (rules run when due)
        live.attach(context, subscribe=False)
    else:
        live.context, live.cursor = context, store.cursor()
    return live


def analyse(live: LiveAnalysis, t: int, now: float) -> list | None:
    """One wake-up of the live analysis at simulated time ``now``: the findings of the pass it
    ran, or None. A snapshot-scheduled analysis decides itself when its rules are due; a
    periodic one passes every 5 s here."""
    if hasattr(live, "observe"):
        return live.poll()
    return live.run_once(now) if t % 5 == 0 else None


def drive(
    tmp_path, slow_from: float | None, seconds: int = 400, analyse_from: int = 270
) -> tuple[list[float], list]:
    """Write one step per rank per second through the Store API (simulated time, each tick
    also published as the sampler does) and run the live analysis. Returns the times rank3
    was shown as a straggler and the findings of the last pass."""
    store = Store(tmp_path / "live.duckdb")
    run = RunInfo("run-1", "train", 4242, ["train.py"], "/", "test", T0, 1.0, str(store.path))
    store.write_run(run)
    hub = SnapshotHub()
    live = live_analysis(store, run, hub)
    rng = np.random.default_rng(1)
    flagged: list[float] = []
    current: list = []
    try:
        for t in range(1, seconds + 1):
            now = T0 + t
            times = 0.5 * (1 + 0.03 * rng.standard_normal(RANKS))
            if slow_from is not None and t >= slow_from:
                times[3] *= 2.0
            b = BatchBuilder(SOURCE, now)
            for rank, value in enumerate(times):
                b.add(rank_entity(rank), "step.time", float(value))
            batch = b.build()
            store.write_ticks([(run.run_id, [batch])])
            hub.publish(now, [batch], {})
            if t < analyse_from:
                continue
            found = analyse(live, t, now)
            # A pass runs the rules that are due (another rule's watch may start one): keep
            # the latest pass that judged the straggler rule.
            if found is not None and any(f.rule == "straggler" for f in found):
                current = found
            shown = live.context.findings if live.context is not None else []
            if any(f["rule"] == "straggler" and f["entity"] == "rank3" for f in shown):
                flagged.append(t)
    finally:
        live.stop()
        store.close()
    return flagged, current


def test_a_rank_slowing_down_is_flagged_live_within_a_minute(tmp_path):
    from agent.analysis.rules import RULES_BY_ID
    from agent.analysis.thresholds import LIVE_LATENCY_SLACK_S

    flagged, current = drive(tmp_path, slow_from=300)
    assert flagged, "the straggler was never flagged live"
    # issue 14's target: within the rule's minimum duration + 10 s of the onset (at 300 s)
    limit = 300 + RULES_BY_ID["straggler"].min_duration_s + LIVE_LATENCY_SLACK_S
    assert 300 < flagged[0] <= limit, (flagged[0], limit)
    assert flagged[-1] == 400  # still shown at the end: a later pass of other rules keeps it
    (f,) = [f for f in current if f.rule == "straggler"]
    assert f.live and f.entity == "rank3" and f.severity == "critical"
    assert abs((f.start.timestamp() - T0) - 300) <= 10  # from when it started
    assert f.evidence["relative_score"] < 0.6


def test_ranks_at_the_same_speed_are_not_flagged_live(tmp_path):
    flagged, current = drive(tmp_path, slow_from=None, seconds=300, analyse_from=200)
    assert current is not None
    assert flagged == [] and [f for f in current if f.rule.startswith(("straggler", "rank-"))] == []


def _tick(times: list[float]):
    hub = SnapshotHub()
    b = BatchBuilder(SOURCE, T0)
    for rank, value in enumerate(times):
        b.add(rank_entity(rank), "step.time", value)
    return hub.publish(T0, [b.build()], {})


def test_the_step_watch_holds_for_a_lagging_rank_and_not_for_even_ones():
    from agent.analysis.rules.straggler_watch import steps_lagging

    assert steps_lagging(_tick([0.5, 0.51, 0.49, 0.5, 1.0]))
    assert not steps_lagging(_tick([0.5, 0.51, 0.49, 0.5, 0.52]))
    assert not steps_lagging(_tick([0.5, 1.0]))  # two ranks: no median of peers
