"""Live findings come within a rule's minimum duration + 10 s of the condition's onset.

Every scenario (GPU and TPU) and every host variant of the rule tests is recorded in simulated
time with the live analysis polled after each tick; the same file is then analysed post-run.
For each rule the post-run analysis reports, its onset is the start of the episode that made it
a finding, and the first live showing must come within ``Rule.min_duration_for`` + 10 s. The
scheduler's pacing (retries, refreshes, the full pass) is checked on its own below.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from agent.analysis.budget import RuleClock, Schedule
from agent.analysis.causes import EXPLAINS
from agent.analysis.engine import Rule
from agent.analysis.finding import Finding
from agent.analysis.rules import ALL_RULES, RULES_BY_ID
from agent.analysis.thresholds import (
    GPU_MEMORY_GROWTH,
    LIVE_FULL_PERIOD_S,
    LIVE_LATENCY_SLACK_S,
    LIVE_REFRESH_S,
    LIVE_RETRY_S,
)
from agent.analysis.watch import hang_state
from agent.model import BatchBuilder
from agent.snapshot import SnapshotHub
from tests.analysis.live_runs import cases, live_run
from tests.analysis.recording import T0
from tests.analysis.test_live_latency_fabric_storage import HEALTHY as FABRIC_STORAGE_HEALTHY
from tests.analysis.test_live_latency_fabric_storage import SCENARIOS as FABRIC_STORAGE_SCENARIOS

CASES = cases()
#: Scenarios and variants in which the post-run analysis finds nothing (checked: still none
#: live; several are near misses of a rule: a TPU hang whose job still works, a late runtime).
QUIET = {
    "a100-healthy",
    "consumer-card",
    "h100-mig",
    "healthy",
    "t4-legacy-driver",
    "launch-bound",
    "tpu-runtime-lost",
    "tpu-7x-multislice-overlapped",
    "fabric-storage-healthy",
    "tpu-v5e-8-hang",  # the job's processes work: not a hang (see tpu-v5e-8-hang-quiet-job)
    "tpu-v3-8-healthy",
    "tpu-v5e-8-healthy",
    "tpu-v6e-runtime-late",
}


#: Case → the rules it is there to trigger (each found post-run and shown live in time).
MUST_GIVE: dict[str, set[str]] = {
    "checkpoint-stall": {"gpu-starvation"},
    "checkpoint-writes": {"checkpoint-stall"},
    "comm-bound": {"comm-bound"},
    "dataloader": {"dataloader-bound", "gpu-starvation"},
    "fp32-training": {"low-tensor-core-use"},
    "gpu-lost": {"hardware-fault"},
    "hang": {"hang"},
    "idle-reserved": {"idle-reserved-gpu"},
    "io-wait": {"io-bound"},
    "launch-pinned": {"launch-bound"},
    "main-loader": {"dataloader-bound"},
    "memory-bound": {"memory-bandwidth-bound"},
    "memory-leak": {"gpu-memory-pressure"},
    "memory-pressure": {"gpu-memory-pressure"},
    "pcie-bound": {"h2d-transfer"},
    "power-capped": {"throttling"},
    "rank-spread": {"rank-spread"},
    "straggler": {"straggler"},
    "swap": {"host-memory-pressure"},
    "throttled-thermal": {"throttling"},
    "tpu-7x-multislice-dcn-bound": {"collective-latency-bound"},
    "tpu-v5e-8-hang-quiet-job": {"hang"},
    "tpu-v5e-8-input-bound": {"input-bound"},
    "tpu-v5e-8-transfer-bound": {"transfer-latency-bound"},
    "tpu-v5p-8-memory-pressure": {"gpu-memory-pressure"},
    "xid-error": {"hardware-fault"},
}

#: Fabric and storage scenarios run with their simulated trees in
#: test_live_latency_fabric_storage.py (every rule they give, GPU ones too, is measured there).
WITH_TREES = {*FABRIC_STORAGE_SCENARIOS, FABRIC_STORAGE_HEALTHY}


@pytest.mark.parametrize(
    "case",
    sorted(c for c in CASES if c not in WITH_TREES),
)
def test_each_rule_shows_live_within_its_minimum_duration_plus_10_s(tmp_path, case):
    run = live_run(tmp_path / f"{case}.duckdb", CASES[case])
    assert run.live.last_error is None, run.live.last_error
    if case in QUIET:
        assert run.latencies == [] and run.first_live_s == {}
        return
    assert run.latencies, f"{case}: the post-run analysis found nothing"
    missing = MUST_GIVE.get(case, set()) - {x.rule for x in run.latencies}
    assert not missing, f"{case}: the rules it is for were not found: {missing}"
    late = [(x.rule, x.onset_s, x.first_live_s, x.target_s) for x in run.latencies if not x.met]
    assert not late, f"{case}: (rule, onset, first live, target) {late}"
    # live never showed (at any tick, not just at the end) what the post-run analysis of the
    # same run does not find, or a symptom of what it found (the GPUs starving live before the
    # second checkpoint makes checkpoint-stall the cause)
    found = {x.rule for x in run.latencies}
    explained = {s for r in found for s in (*RULES_BY_ID[r].supersedes, *EXPLAINS.get(r, ()))}
    assert set(run.first_live_s) <= found | explained, set(run.first_live_s) - found - explained
    assert {f["rule"] for f in run.live_findings} <= found


def test_every_rule_that_can_show_live_must_show_in_some_case_and_declares_a_watch():
    """Each rule is some case's to give (asserted by that case's run above, or by the
    fabric/storage file's), so a rule no scenario triggers live fails here."""
    from agent.analysis.rules.straggler_watch import never_live

    live_rules = {r.id for r in ALL_RULES if r.may_find is not never_live}
    given = {r for rules in MUST_GIVE.values() for r in rules}
    given |= {r for _, rules in FABRIC_STORAGE_SCENARIOS.values() for r in rules}
    assert live_rules - given == set(), "rules no case must show live"
    assert set(MUST_GIVE) <= set(CASES) and not set(MUST_GIVE) & QUIET
    assert [r.id for r in ALL_RULES if r.id in live_rules and r.watch is None] == []
    assert all(r.lookback_s >= r.min_duration_s for r in ALL_RULES)


def test_a_healthy_run_runs_no_pass_before_the_full_period(tmp_path):
    run = live_run(tmp_path / "healthy.duckdb", CASES["healthy"])
    assert run.live.cost.passes == 0 and run.live.cycles == 0
    assert run.live.context.findings == ()
    assert run.live.watch_errors == 0


def test_a_healthy_runs_full_passes_run_no_statement(tmp_path):
    """Every 20 s a full pass is due, but on a healthy run no watch holds and no rule without
    one can find live: no statement runs, so the analysis costs the watches alone."""
    run = live_run(tmp_path / "healthy.duckdb", CASES["healthy"], full_period_s=20.0)
    assert run.live.cost.passes == 0 and run.live.cycles == 0
    assert run.live.schedule is not None and run.live.schedule.last_full is not None
    assert run.live.schedule.last_full >= T0 + 60


def _rule(**kw) -> Rule:
    return Rule("r", "test rule", lambda ctx: [], watch=lambda tick: True, **kw)


def test_a_watch_makes_its_rule_due_one_bucket_before_the_minimum_duration():
    schedule = Schedule([_rule(min_duration_s=30.0)], bucket_s=1.0)
    due_at = []
    for t in range(0, 40):
        schedule.observe(T0 + t, {("r", None)} if t >= 5 else set())
        if schedule.due(T0 + t):
            due_at.append(t)
            schedule.ran(T0 + t, schedule.rules, {("r", None)})
    assert due_at == [5 + 29]  # the 30th flagged bucket is the last one the episode needs


def test_an_unconfirmed_watch_retries_with_backoff_up_to_the_refresh_period():
    clock = RuleClock([30.0])
    clock.observe(0.0, True, 1.0, 10.0)
    tries = []
    for t in range(0, 1000):
        clock.observe(float(t), True, 1.0, 10.0)
        if clock.is_due(float(t)):
            tries.append(t)
            clock.ran(float(t), False)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert tries[0] == 29
    assert gaps[:4] == [LIVE_RETRY_S, 2 * LIVE_RETRY_S, 4 * LIVE_RETRY_S, 8 * LIVE_RETRY_S]
    assert max(gaps) == LIVE_REFRESH_S


def test_a_confirmed_finding_refreshes_then_closes_without_a_pass_when_its_watch_stops():
    clock = RuleClock([30.0])
    for t in range(0, 30):
        clock.observe(float(t), True, 1.0, 10.0)
    assert clock.is_due(29.0)
    clock.ran(29.0, True)
    assert clock.due_at == 29.0 + LIVE_REFRESH_S
    for t in range(30, 60):
        clock.observe(float(t), t < 40, 1.0, 10.0)
    assert clock.closed == 40.0  # ended after the last tick that held; no pass is due
    assert clock.due_at is None and not clock.confirmed


def test_a_condition_that_comes_and_goes_costs_one_pass_per_refresh_period():
    schedule = Schedule([_rule(min_duration_s=30.0)], bucket_s=1.0, full_period_s=1e9)
    passes, reopened = [], []
    for t in range(0, 1000):
        holds = t % 60 < 40  # 40 s of throttling every minute
        changed = schedule.observe(T0 + t, {("r", None)} if holds else set())
        reopened += [t for v in changed.values() if v is None]
        if schedule.due(T0 + t):
            passes.append(t)
            schedule.ran(T0 + t, schedule.rules, {("r", None)})
    assert passes[0] == 29
    assert all(b - a >= LIVE_REFRESH_S for a, b in zip(passes, passes[1:]))
    # the episodes between passes reopen the finding once they held the minimum, without SQL
    assert reopened[:2] == [60 + 29, 120 + 29]


def test_a_rule_that_is_ready_is_due_at_once_but_not_while_confirmed():
    clock = RuleClock([60.0])
    for t in range(0, 30):
        clock.observe(float(t), True, 1.0, 10.0)
    assert not clock.is_due(29.0)  # its minimum (less one bucket) is 59 s away
    clock.ready(29.0)
    assert clock.is_due(29.0)
    clock.ran(29.0, True)
    clock.ready(40.0)
    assert clock.due_at == 29.0 + LIVE_REFRESH_S  # confirmed: it refreshes, nothing sooner
    idle = RuleClock([30.0])
    idle.ready(5.0)  # its watch does not hold: nothing to run
    assert idle.due_at is None


def test_a_leak_shows_live_at_the_first_tick_it_has_grown_by_the_rules_share(tmp_path):
    """Its 60 s are not enough: 5% of an 80 GiB card at 0.06 GiB/s takes 67 s; the pass comes
    the tick the growth is there (retries alone came 3-6 s later, at the target's edge)."""
    from agent.store import connect

    path = tmp_path / "memory-leak.duckdb"
    run = live_run(path, CASES["memory-leak"])
    con = connect(str(path))
    try:
        (first_ready,) = con.execute(
            """WITH m AS (SELECT entity, epoch(ts) AS t, value FROM samples
                          WHERE metric = 'gpu.memory.used'),
                    c AS (SELECT entity, max(value) AS total FROM samples
                          WHERE metric = 'gpu.memory.total' GROUP BY entity)
               SELECT min(m.t) - ? FROM m JOIN c USING (entity)
               WHERE m.value - (SELECT min(value) FROM m m0 WHERE m0.entity = m.entity)
                     >= ? * c.total""",
            [T0, GPU_MEMORY_GROWTH],
        ).fetchone()
    finally:
        con.close()
    (leak,) = [x for x in run.latencies if x.rule == "gpu-memory-pressure"]
    assert leak.first_live_s == first_ready
    assert leak.latency_s is not None and leak.latency_s <= leak.target_s - 2


def test_dataloader_bound_shows_with_its_minimum_not_held_for_a_tpu_rule(tmp_path):
    """On GPUs (no program queue) the TPU input-bound rule cannot find, so its watch does not
    hold and ``dataloader-bound`` is not held back for it until its own target."""
    run = live_run(tmp_path / "dataloader.duckdb", CASES["dataloader"])
    latency = {x.rule: x.latency_s for x in run.latencies}
    assert latency["dataloader-bound"] is not None
    assert latency["dataloader-bound"] <= RULES_BY_ID["dataloader-bound"].min_duration_s


def test_a_condition_there_from_the_first_tick_is_not_due_before_its_sql_can_see_it(tmp_path):
    """The first tick has no rates and no GPM SM activity, so launch-bound's SQL flags only from
    the second: a clock started at the first made its pass miss by a bucket and retry 3 s on."""
    run = live_run(tmp_path / "launch-pinned.duckdb", CASES["launch-pinned"])
    (launch,) = [x for x in run.latencies if x.rule == "launch-bound"]
    assert launch.onset_s == 2.0
    assert launch.latency_s is not None and launch.latency_s <= launch.target_s - 10


def test_a_gpus_own_starvation_is_due_when_it_has_lasted_not_when_any_gpu_dipped_first(
    tmp_path,
):
    """In ib-port-degrading (here without its sysfs tree) eight GPUs dip below 70% in turn from
    20 s, so the rule's watch holds from then, but gpu0's own episode starts at 32 s: timed per
    GPU, the pass comes when that episode is long enough (retries alone came 39-41 s late)."""
    run = live_run(tmp_path / "ib.duckdb", CASES["ib-port-degrading"])
    (starved,) = [x for x in run.latencies if x.rule == "gpu-starvation"]
    assert starved.latency_s is not None and starved.latency_s <= starved.target_s - 5


def test_the_full_pass_runs_the_rules_without_a_watch():
    unwatched = Rule("u", "no watch", lambda ctx: [])
    schedule = Schedule([unwatched, _rule()], bucket_s=1.0)
    schedule.observe(T0, set())
    assert schedule.due(T0 + LIVE_FULL_PERIOD_S - 1) == []
    assert [r.id for r in schedule.due(T0 + LIVE_FULL_PERIOD_S)] == ["u"]


def test_the_full_pass_runs_a_rule_whose_watch_held_within_its_lookback():
    """A watch is a necessary condition of its rule's flag: a rule whose watch held at no tick
    of its lookback cannot find, so the full pass skips it; one that held (or whose watch
    failed: only its SQL can tell) within its lookback runs."""
    held = Rule("held", "h", lambda ctx: [], watch=lambda t: True, lookback_s=60.0)
    failed = Rule("failed", "f", lambda ctx: [], watch=lambda t: True, lookback_s=60.0)
    old = Rule("old", "o", lambda ctx: [], watch=lambda t: True, lookback_s=60.0)
    never = Rule("never", "n", lambda ctx: [], watch=lambda t: True, lookback_s=60.0)
    schedule = Schedule([held, failed, old, never], bucket_s=1.0)
    schedule.observe(T0, set())
    schedule.observe(T0 + 100, {("old", None)})
    schedule.observe(T0 + LIVE_FULL_PERIOD_S - 30, {("held", None)}, may_find=["failed"])
    due = schedule.due(T0 + LIVE_FULL_PERIOD_S)
    assert [r.id for r in due] == ["held", "failed"]
    schedule.ran(T0 + LIVE_FULL_PERIOD_S, due, set())
    assert schedule.last_full == T0 + LIVE_FULL_PERIOD_S


def test_a_full_pass_with_nothing_that_could_find_runs_no_statement():
    schedule = Schedule([_rule()], bucket_s=1.0)
    schedule.observe(T0, set())
    assert schedule.due(T0 + LIVE_FULL_PERIOD_S) == []
    assert schedule.last_full == T0 + LIVE_FULL_PERIOD_S  # the next one is a period later
    assert schedule.due(T0 + 2 * LIVE_FULL_PERIOD_S - 1) == []


def test_the_full_pass_can_still_run_every_rule():
    unwatched = Rule("u", "no watch", lambda ctx: [])
    schedule = Schedule([unwatched, _rule()], bucket_s=1.0)
    schedule.full_pass_every_rule = True
    schedule.observe(T0, set())
    assert [r.id for r in schedule.due(T0 + LIVE_FULL_PERIOD_S)] == ["u", "r"]


def test_a_due_symptom_runs_with_the_rule_that_explains_it():
    symptom = Rule("gpu-starvation", "s", lambda ctx: [], watch=lambda t: True)
    cause = Rule("hang", "h", lambda ctx: [], supersedes=("gpu-starvation",))
    other = Rule("x", "x", lambda ctx: [])
    schedule = Schedule([cause, symptom, other], bucket_s=1.0)
    for t in range(0, 31):
        schedule.observe(T0 + t, {("gpu-starvation", None)})
    assert [r.id for r in schedule.due(T0 + 30)] == ["hang", "gpu-starvation"]
    schedule = Schedule([cause, symptom], bucket_s=1.0)
    schedule.clocks[("hang", None)] = schedule.clocks.pop(("gpu-starvation", None))
    for t in range(0, 31):
        schedule.observe(T0 + t, {("hang", None)})
    assert [r.id for r in schedule.due(T0 + 30)] == ["hang", "gpu-starvation"]


def test_latency_target_is_the_minimum_duration_of_the_findings_kind_plus_10_s():
    memory = RULES_BY_ID["gpu-memory-pressure"]

    def finding(kind: str) -> Finding:
        return Finding(
            memory.id, "warning", "gpu0", datetime(2026, 1, 1), None, "", "", {"kind": kind}
        )

    leak, full = finding("leak"), finding("near_capacity")
    assert memory.min_duration_for(leak) + LIVE_LATENCY_SLACK_S == 70.0
    assert memory.min_duration_for(full) + LIVE_LATENCY_SLACK_S == 20.0


# -- the hang watch (the device condition of rules/hang.py on one snapshot) ----------------


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
