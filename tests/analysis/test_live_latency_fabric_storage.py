"""Fabric and storage findings come live within their rule's minimum duration + 10 s of onset.

Each fabric/storage scenario is recorded in simulated time with its simulated sysfs/procfs
trees read by the real fabric and storage collectors (as in ``test_fabric_storage_rules``) and
the live analysis polled after each tick; the same file is then analysed post-run, and each
rule's first live showing is measured from the onset of the post-run finding's episode.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from agent.analysis.engine import finding_windows
from agent.analysis.live import LiveAnalysis
from agent.analysis.rules import RULES_BY_ID
from agent.analysis.rules.fabric import (
    CONGESTION_PER_S,
    watch_congestion,
    watch_fabric_health,
    watch_port_down,
)
from agent.analysis.thresholds import LIVE_LATENCY_SLACK_S
from agent.analysis.watch import Tick
from agent.model import BatchBuilder
from agent.snapshot import SnapshotHub
from tests.analysis.live_runs import RUN_S, LiveRun, live_run
from tests.analysis.recording import T0, Recording, step_log
from tests.analysis.test_fabric_storage_rules import simulated_collectors

#: Scenario → (the simulated sources it needs, the rules it must show live).
SCENARIOS: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "ib-port-degrading": (("fabric",), {"fabric-health"}),
    # one condition at a time (tests/analysis/scenarios/): errors, down, downtrained
    "ib-port-errors-only": (("fabric",), {"fabric-health"}),
    "ib-port-down-only": (("fabric",), {"fabric-health"}),
    "ib-port-downtrained-only": (("fabric",), {"fabric-health"}),
    # a dual-port HCA: the port that dropped, not the one cabled slower from the start
    "ib-dual-port-split": (("fabric",), {"fabric-health"}),
    "lustre-read-starving": (("storage",), {"storage-input-bound"}),
    "roce-congestion": (("fabric",), {"fabric-congestion"}),
    "nfs-latency-starving": (("storage",), {"storage-input-bound"}),
    "checkpoint-lustre": (("storage",), {"storage-checkpoint-stall"}),
    "comm-bound-ethernet": (("fabric",), {"comm-bound"}),
}
HEALTHY = "fabric-storage-healthy"
FABRIC_STORAGE_RULES = {
    "fabric-health",
    "fabric-congestion",
    "storage-input-bound",
    "storage-checkpoint-stall",
}


def fabric_storage_run(tmp_path, scenario: str, sources: tuple[str, ...]) -> LiveRun:
    spec = Recording(
        scenario,
        RUN_S,
        run_id=scenario,
        collectors=simulated_collectors(scenario, sources),
    )
    return live_run(tmp_path / f"{scenario}.duckdb", spec)


def _second(ts: datetime) -> int:
    return round((ts - datetime(1970, 1, 1)).total_seconds() - T0)


@pytest.fixture
def held(monkeypatch) -> dict[str, set[int]]:
    """Per rule, the run seconds at which its watch held (spied on ``LiveAnalysis.observe``)."""
    seen: dict[str, set[int]] = {}
    observe = LiveAnalysis.observe

    def spy(self, snap):
        holding = observe(self, snap)
        for rule, _ in holding:
            seen.setdefault(rule, set()).add(round(snap.ts - T0))
        return holding

    monkeypatch.setattr(LiveAnalysis, "observe", spy)
    return seen


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fabric_and_storage_rules_show_live_within_their_minimum_duration_plus_10_s(
    tmp_path, scenario, held
):
    sources, wanted = SCENARIOS[scenario]
    run = fabric_storage_run(tmp_path, scenario, sources)
    assert run.live.last_error is None, run.live.last_error
    assert run.live.watch_errors == 0
    by_rule = {x.rule: x for x in run.latencies}
    assert wanted <= set(by_rule), f"{scenario}: post-run found {sorted(by_rule)}"
    for rule in sorted(wanted):
        x = by_rule[rule]
        assert x.target_s == RULES_BY_ID[rule].min_duration_s + LIVE_LATENCY_SLACK_S
        print(f"{scenario} {rule}: onset {x.onset_s:.0f} s, first live {x.first_live_s} s, "
              f"latency {x.latency_s} s, target {x.target_s:.0f} s")  # fmt: skip
    late = [(x.rule, x.onset_s, x.first_live_s, x.target_s) for x in run.latencies if not x.met]
    assert not late, f"{scenario}: (rule, onset, first live, target) {late}"
    # live shows nothing the post-run analysis of the same run does not
    assert set(run.first_live_s) <= set(by_rule)
    # a watch never says no where the SQL flags: an episode's first and last buckets are
    # flagged ones (buckets between may be gaps the episode bridges)
    for f in run.post_run:
        if f.rule in FABRIC_STORAGE_RULES:
            for start, end in finding_windows(f):
                ends = {_second(start), _second(end) - 1}
                assert ends <= held.get(f.rule, set()), (f.rule, ends)


def test_a_port_going_down_after_its_finding_was_confirmed_turns_it_critical_within_its_latency(
    tmp_path, monkeypatch
):
    """ib-port-degrading: mlx5_2/1 downtrains with errors at 20 s (a warning), goes down at
    40 s. The finding must turn critical live within the rule's latency of the port going
    down (not at the next 300 s refresh), and not before it went down."""
    seen: dict[str, list[tuple[int, str]]] = {}
    poll = LiveAnalysis.poll

    def spy(self):
        out = poll(self)
        now = self.recent.latest if self.recent is not None else None
        for f in self.context.findings if now is not None else ():
            if f["rule"] == "fabric-health":
                seen.setdefault(str(f["entity"]), []).append((round(now - T0), f["severity"]))
        return out

    monkeypatch.setattr(LiveAnalysis, "poll", spy)
    run = fabric_storage_run(tmp_path, "ib-port-degrading", ("fabric",))
    assert run.live.last_error is None, run.live.last_error
    port = seen["ib:mlx5_2/1"]
    down_at, latency = 40, RULES_BY_ID["fabric-health"].min_duration_s + LIVE_LATENCY_SLACK_S
    warned = min(t for t, sev in port)
    critical = min((t for t, sev in port if sev == "critical"), default=None)
    print(f"fabric-health on mlx5_2/1: shown {warned} s, critical {critical} s (down at 40 s)")
    assert warned <= 20 + latency and all(sev == "warning" for t, sev in port if t < down_at)
    assert critical is not None, "never critical live"
    assert down_at <= critical <= down_at + latency
    assert set(seen) == {"ib:mlx5_2/1"}  # the healthy ports stay out of it


def test_healthy_fabric_and_storage_give_no_fabric_or_storage_finding_live(tmp_path):
    run = fabric_storage_run(tmp_path, HEALTHY, ("fabric", "storage"))
    assert run.live.last_error is None, run.live.last_error
    assert run.latencies == [] and run.first_live_s == {}  # nothing post-run, nothing live
    assert run.live.cost.passes == 0  # no watch held long enough to cost a pass


@pytest.mark.parametrize(
    ("scenario", "sources"),
    [("roce-marks-at-full-rate", ("fabric",)), ("lustre-reads-at-full-speed", ("storage",))],
)
def test_marks_at_full_throughput_and_fast_lustre_reads_give_nothing_live(
    tmp_path, scenario, sources
):
    run = fabric_storage_run(tmp_path, scenario, sources)
    assert run.live.last_error is None, run.live.last_error
    shown = set(run.first_live_s) | {x.rule for x in run.latencies}
    assert not shown & FABRIC_STORAGE_RULES, shown


def test_every_fabric_and_storage_rule_declares_a_watch():
    assert [r for r in sorted(FABRIC_STORAGE_RULES) if RULES_BY_ID[r].watch is None] == []


# -- rank-spread: per-rank step times, one rank persistently slower -------------------------


def _spread_steps(rank: int, t: float) -> float:
    """Four ranks at 0.5 s a step with 2% noise; rank 3 runs 15% slower from the start."""
    noise = 0.01 * ((rank * 7 + int(t) * 3) % 5 - 2)
    return 0.5 * (1.15 if rank == 3 else 1.0) * (1 + noise)


def test_a_persistent_rank_spread_shows_live_within_its_minimum_duration_plus_10_s(tmp_path):
    spec = Recording("healthy", RUN_S, run_id="spread", extra=[step_log(_spread_steps, 4)])
    run = live_run(tmp_path / "spread.duckdb", spec)
    assert run.live.last_error is None, run.live.last_error
    by_rule = {x.rule: x for x in run.latencies}
    assert "rank-spread" in by_rule, f"post-run found {sorted(by_rule)}"
    x = by_rule["rank-spread"]
    print(f"rank-spread: onset {x.onset_s} s, first live {x.first_live_s} s, target {x.target_s}")
    assert x.met, (x.onset_s, x.first_live_s, x.target_s)


def test_even_ranks_give_no_rank_spread_live(tmp_path):
    even = step_log(lambda rank, t: _spread_steps(0, t + rank), 4)
    run = live_run(tmp_path / "even.duckdb", Recording("healthy", RUN_S, extra=[even]))
    assert "rank-spread" not in run.first_live_s
    assert run.live.cost.passes == 0


# -- the fabric watches on single ticks ------------------------------------------------------


def _port_ticks(*ticks: dict[str, dict[str, float]]) -> Tick:
    """Publish fabric batches (port → metric → value) one second apart; the last as a Tick."""
    hub = SnapshotHub()
    snap = None
    for i, ports in enumerate(ticks):
        b = BatchBuilder("fabric", T0 + i)
        for port, values in ports.items():
            b.add_many(port, values)
        snap = hub.publish(T0 + i, [b.build()], {})
    assert snap is not None
    return Tick(snap)


_UP = {"host.ib.up": 1.0, "host.ib.rate": 25e9, "host.ib.rate.max": 25e9, "host.ib.errors": 5.0}


def test_fabric_health_watch_holds_for_rising_errors_a_down_port_or_a_downtrained_one():
    port = "ib:mlx5_0/1"
    assert not watch_fabric_health(_port_ticks({port: _UP}, {port: _UP}))
    assert not watch_port_down(_port_ticks({port: _UP}, {port: _UP}))
    assert watch_fabric_health(_port_ticks({port: _UP}, {port: {**_UP, "host.ib.errors": 6.0}}))
    down = _port_ticks({port: _UP}, {port: {**_UP, "host.ib.up": 0.0}})
    assert watch_port_down(down) and not watch_fabric_health(down)  # timed on its own
    assert watch_fabric_health(_port_ticks({port: _UP}, {port: {**_UP, "host.ib.rate": 12.5e9}}))
    # a counter reset is no increase (the SQL's ``greatest(..., 0)``)
    assert not watch_fabric_health(_port_ticks({port: _UP}, {port: {**_UP, "host.ib.errors": 0.0}}))


def test_a_port_that_appeared_since_the_last_tick_holds_the_watch_until_it_has_a_rate():
    """The SQL compares its counters with the port's last bucket in the window (maybe before
    a gap), so a watch that cannot tell must say yes."""
    ports = {"ib:mlx5_0/1": _UP}
    both = {**ports, "ib:mlx5_1/1": _UP}
    assert watch_fabric_health(_port_ticks(ports, both))
    assert not watch_fabric_health(_port_ticks(both, both))
    assert not watch_fabric_health(_port_ticks(both))  # the first tick: nothing to compare


def test_congestion_watch_holds_from_the_rules_rate_of_marks():
    port = "ib:mlx5_0/1"
    quiet = {"host.ib.cnp_sent": 0.0, "host.ib.cnp_handled": 0.0, "host.ib.ecn_marked": 0.0}
    marks = {**quiet, "host.ib.cnp_handled": CONGESTION_PER_S / 2, "host.ib.ecn_marked": 60.0}
    assert watch_congestion(_port_ticks({port: quiet}, {port: marks}))
    few = {**quiet, "host.ib.ecn_marked": CONGESTION_PER_S - 1}
    assert not watch_congestion(_port_ticks({port: quiet}, {port: few}))


# -- a symptom waits for its cause ------------------------------------------------------------


def test_in_nfs_latency_starving_the_cause_shows_live_no_later_than_the_starvation(tmp_path):
    """The GPUs starve from 10 s; the mount's latency looks slow from 19 s. The live list must
    not lead with the symptom: ``storage-input-bound`` (naming the mount) comes first or with
    it, and the symptom (if it shows beside its cause at all) still within its own latency."""
    run = fabric_storage_run(tmp_path, "nfs-latency-starving", ("storage",))
    assert run.live.last_error is None, run.live.last_error
    first = run.first_live_s
    print(f"nfs-latency-starving first live: {first}")
    assert "storage-input-bound" in first
    assert first["storage-input-bound"] <= first.get("gpu-starvation", float("inf"))
    late = [(x.rule, x.onset_s, x.first_live_s, x.target_s) for x in run.latencies
            if x.first_live_s is not None and not x.met]  # fmt: skip
    assert not late, late


def _finding(rule: str, start_s: float):
    from agent.analysis.finding import Finding

    at = datetime(1970, 1, 1) + timedelta(seconds=T0 + start_s)
    return Finding(rule, "warning", "gpu0", at, None, "s", "n", {})


def test_a_symptom_waits_for_a_cause_whose_watch_holds_but_no_longer_than_its_own_latency():
    """The GPUs starve from 10 s (min 30 s), the cause's watch holds from 10 s (min 30 s)."""
    from agent.analysis.budget import RuleClock
    from agent.analysis.hold import explainers, held_back

    rules = [RULES_BY_ID["gpu-starvation"], RULES_BY_ID["storage-input-bound"]]
    by_id = {r.id: r for r in rules}
    causes = explainers(rules)
    assert "storage-input-bound" in causes["gpu-starvation"]
    clock = RuleClock([30.0], since=T0 + 10)
    clocks = {("storage-input-bound", None): clock}
    symptom = _finding("gpu-starvation", 10)

    def shown(now_s: float, findings=(symptom,)):
        return [f.rule for f in held_back(findings, T0 + now_s, by_id, causes, clocks, 1.0)]

    assert shown(40) == []  # the cause's watch holds, unconfirmed: the symptom waits
    assert shown(48.9) == []
    assert shown(49) == ["gpu-starvation"]  # its own latency (10 + 30 + 10 - 1 s) is the bound
    cause = _finding("storage-input-bound", 19)
    assert shown(40, (symptom, cause)) == ["gpu-starvation", "storage-input-bound"]
    clock.since = None  # the cause's watch stopped holding: nothing to wait for
    assert shown(40) == ["gpu-starvation"]
    clock.since = T0 + 25  # a cause that cannot be ready (25 + 30 s) before the symptom must show
    assert shown(40) == ["gpu-starvation"]
    clock.since, clock.confirmed = T0 + 10, True  # confirmed elsewhere: no wait either
    assert shown(40) == ["gpu-starvation"]
