"""Live analysis within a CPU budget: the governor spaces full passes by the sampling CPU,
and the hang watch triggers a pass at once, whatever the governor says."""

from __future__ import annotations

from types import SimpleNamespace

import duckdb
import pytest

from agent.analysis.budget import CpuBudget
from agent.analysis.live import LiveAnalysis
from agent.analysis.thresholds import HANG_MIN_S, LIVE_CPU_SHARE, LIVE_FIRST_PASS_CPU_S
from agent.analysis.watch import HangWatch, hang_state
from agent.model import BatchBuilder
from agent.snapshot import SnapshotHub
from agent.store import Store
from tests.analysis.recording import T0, Recording, record
from tests.analysis.test_live import fake_session

HANG_ONSET_S = 20  # the simulated `hang` scenario deadlocks at 20 s


def budgeted(store: Store, hub: SnapshotHub, live: LiveAnalysis) -> SimpleNamespace:
    """A fake session whose sampler has a synthetic CPU counter the test advances."""
    session = fake_session(store, hub=hub, sampler=True)
    live.context, live.cursor = session.context, store.cursor()
    return session


def test_governor_spaces_passes_so_the_share_stays_within_budget():
    budget = CpuBudget(share=0.05, min_period_s=10, max_period_s=600, first_pass_cpu_s=0.1)
    sampling, passes, shares = 0.0, [], []
    for now in range(0, 1800):
        sampling += 0.010  # 10 ms of sampling CPU per 1 s tick
        budget.sampled(now, sampling)
        budget.charge(0.0001)  # the hang watch, every tick
        if budget.due(now):
            budget.ran_pass(now, 0.100)
            passes.append(now)
        shares.append(budget.cpu_share)
    # 5% of 10 ms/s pays 0.1 ms/s for the watch and 100 ms per pass, planned with 50%
    # headroom: the first pass once 150 ms are paid for, then one every 250 s
    assert passes[0] == 375
    expected = 0.100 / (0.05 * 0.010 - 0.0001)
    gaps = {b - a for a, b in zip(passes[1:], passes[2:])}
    assert gaps and all(abs(g - expected) <= 1 for g in gaps), gaps
    assert max(shares) <= 0.05


def test_governor_runs_a_pass_at_the_maximum_period_even_over_budget():
    budget = CpuBudget(share=0.05, min_period_s=10, max_period_s=600)
    passes = []
    for now in range(0, 1900):
        budget.sampled(now, 1e-6 * now)  # sampling almost free: the budget never allows a pass
        if budget.due(now):
            budget.ran_pass(now, 0.1)
            passes.append(now)
    assert passes == [600, 1200, 1800]
    assert budget.health()["analysis.period_s"] == 600


def test_governor_without_a_sampling_counter_runs_at_the_minimum_period():
    budget = CpuBudget(share=0.05, min_period_s=10, max_period_s=600)
    passes = []
    for now in range(0, 35):
        budget.sampled(now, None)
        if budget.due(now):
            budget.ran_pass(now, 0.1)
            passes.append(now)
    assert passes == [10, 20, 30]
    assert "analysis.cpu_share" not in budget.health()


def test_live_analysis_share_of_sampling_cpu_stays_within_budget_over_ten_minutes(tmp_path):
    per_tick = 0.030  # the synthetic sampler's CPU per tick
    hub = SnapshotHub()
    live = LiveAnalysis()  # measured with time.thread_time(): the real cost of every pass
    session: SimpleNamespace | None = None
    shares: list[tuple[float, float]] = []
    passes: list[float] = []

    def on_tick(now: float, store: Store) -> None:
        nonlocal session
        if session is None:
            session = budgeted(store, hub, live)
        # a sampler at 30 ms of CPU per tick (8 GPUs and a large process tree) pays for a
        # 100-300 ms pass every few minutes
        session.sampler.stats.cpu_seconds += per_tick
        if live.poll(now) is not None:
            passes.append(now - T0)
        if live.budget.cpu_share is not None:
            shares.append((now - T0, live.budget.cpu_share))

    record(tmp_path / "budget.duckdb", Recording("healthy", 600), on_tick=on_tick, hub=hub)
    assert live.budget.passes >= 2  # the budget pays for passes, not just the first
    assert live.budget.passes <= 1 + 600 * per_tick * LIVE_CPU_SHARE / live.budget.pass_cost_s
    # the first pass waits until the sampling CPU pays for its expected cost
    assert passes[0] >= 1.5 * LIVE_FIRST_PASS_CPU_S / (per_tick * LIVE_CPU_SHARE)
    assert live.urgent_passes == 0  # a healthy run never looks hung
    assert shares[-1][1] <= LIVE_CPU_SHARE
    assert session.context.health["analysis.cpu_share"] <= LIVE_CPU_SHARE
    assert session.context.health["analysis.period_s"] >= live.every_s
    # at every tick; 10% tolerance for a pass that costs more than planned on a busy machine
    over = [(t, round(s, 4)) for t, s in shares if s > LIVE_CPU_SHARE * 1.1]
    assert not over, over


def test_hang_is_flagged_within_a_minute_although_the_budget_allows_no_pass(tmp_path):
    hub = SnapshotHub()
    live = LiveAnalysis()
    flagged: list[tuple[float, int]] = []
    session: SimpleNamespace | None = None

    def on_tick(now: float, store: Store) -> None:
        nonlocal session
        if session is None:
            session = budgeted(store, hub, live)
        session.sampler.stats.cpu_seconds += 0.001  # cheap sampling: a pass every few minutes
        current = live.poll(now)
        if current and any(f.rule == "hang" for f in current) and not flagged:
            flagged.append((now - T0, live.urgent_passes))

    record(tmp_path / "hang.duckdb", Recording("hang", 100), on_tick=on_tick, hub=hub)
    assert flagged, "hang never flagged live"
    at, urgent = flagged[0]
    assert HANG_ONSET_S + HANG_MIN_S <= at <= HANG_ONSET_S + 60
    assert urgent == 1  # the hang watch's pass found it, not a scheduled one
    assert live.budget.passes == 1  # the budget paid for no scheduled pass: urgent only
    assert live.urgent_passes == 1  # once confirmed, a lasting hang triggers no more passes
    hang = next(f for f in session.context.findings if f["rule"] == "hang")
    assert hang["evidence"]["kind"] == "spinning"  # the SQL rule's finding, with its evidence
    assert session.context.health["analysis.urgent_passes"] == 1


def _snapshot(
    util: float,
    *,
    sm: float = 0.8,
    traffic: float = 5e9,
    job_cpu: float = 1.5,
    gpus: tuple[str, ...] = ("job", "job", "spare"),
    ts: float = T0,
):
    """GPUs of kind ``job`` (job memory, ``util``), ``spare`` (no job memory, idle) or
    ``stalled`` (job memory, idle), and the job's main process."""
    hub = SnapshotHub()
    gpu = BatchBuilder("nvml", ts)
    for i, kind in enumerate(gpus):
        gpu.describe(f"gpu{i}", used_by_job=kind != "spare")
        working = kind == "job"
        gpu.add_many(
            f"gpu{i}",
            {
                "gpu.utilization": util if working else 0.0,
                "gpu.sm.activity": sm if working else 0.0,
                "gpu.pcie.rx_throughput": traffic,
                "gpu.nvlink.rx_throughput": 0.0,
                "gpu.job.memory": 0.0 if kind == "spare" else 1e9,
            },
        )
        gpu.add(f"gpu{i}/nvlink0", "gpu.nvlink.rx_throughput", 0.0)
    proc = BatchBuilder("process", ts)
    proc.add("4242", "process.cpu.utilization", job_cpu)
    return hub.publish(ts, [gpu.build(), proc.build()], {})


def test_hang_watch_sees_the_hang_rule_condition_on_the_job_gpus_only():
    assert hang_state(_snapshot(0.0, job_cpu=0.01, traffic=0.0)) == "idle"
    # gpu2 holds no job memory and idles: not a job GPU, so it does not break the spin
    assert hang_state(_snapshot(1.0, sm=0.03, traffic=0.0)) == "spinning"
    # a job GPU that idles while the others spin: not every job GPU is stuck the same way
    assert hang_state(_snapshot(1.0, sm=0.03, traffic=0.0, gpus=("job", "job", "stalled"))) is None


def test_hang_watch_ignores_busy_gpus_and_idle_gpus_with_a_working_host():
    assert hang_state(_snapshot(0.97)) is None  # training
    assert hang_state(_snapshot(1.0, sm=0.8, traffic=0.0)) is None  # busy SMs: computing
    assert hang_state(_snapshot(1.0, sm=0.03, traffic=5e9)) is None  # traffic: progressing
    assert hang_state(_snapshot(0.0, job_cpu=1.5, traffic=0.0)) is None  # host-side work


def test_hang_watch_is_due_after_the_rule_minimum_and_retries_until_confirmed():
    watch = HangWatch(min_s=30, retry_s=5)
    for t in range(0, 40):
        watch.observe(_snapshot(1.0, sm=0.03, traffic=0.0, ts=T0 + t))
        if t < 30:
            assert not watch.due(T0 + t)
    assert watch.due(T0 + 39)
    watch.triggered(T0 + 39, confirmed=False)
    assert not watch.due(T0 + 42) and watch.due(T0 + 44)
    watch.triggered(T0 + 44, confirmed=True)
    assert not watch.due(T0 + 60)
    watch.observe(_snapshot(0.97, ts=T0 + 61))  # progress again: the watch re-arms
    assert watch.since is None and not watch.confirmed


def test_a_failing_pass_is_charged_and_not_retried_every_second(tmp_path):
    store = Store(tmp_path / "broken.duckdb")
    live = LiveAnalysis(every_s=10)
    session = budgeted(store, SnapshotHub(), live)
    session.hub.publish(T0, [], {})
    assert live.poll(0.0) is None  # starts the budget's clocks
    session.sampler.stats.cpu_seconds = 100.0  # plenty of budget
    live.cursor.close()  # the pass's first query fails
    with pytest.raises(duckdb.Error):
        live.poll(10.0)
    assert live.budget.passes == 1 and live.budget.last_pass_at == 10.0
    assert live.poll(11.0) is None  # within the minimum period: no retry
    store.close()
