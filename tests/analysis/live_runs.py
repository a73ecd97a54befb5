"""Record a scenario with the live analysis running on every simulated tick, then analyse the
same file after the run: when each rule first showed live, against its post-run onset.

Shared by the latency tests and ``benchmarks/bench_live.py``. Time is simulated: the sampler
ticks once per simulated second and the live analysis reads the snapshots' time, so a 90 s run
takes about a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from agent.analysis import analyze_run
from agent.analysis.engine import Rule, finding_windows
from agent.analysis.finding import Finding
from agent.analysis.live import LiveAnalysis
from agent.analysis.rules import RULES_BY_ID
from agent.analysis.thresholds import LIVE_FULL_PERIOD_S, LIVE_LATENCY_SLACK_S
from agent.snapshot import SnapshotHub
from agent.store import Store, connect
from collectors.sim import list_scenarios, load_scenario
from collectors.sim.tpu.vm import SimulatedTpu
from collectors.tpu.collector import TpuCollector
from tests.analysis.recording import JOB_PID, T0, Recording, profile, record, step_log
from tests.helpers import VALUES_DEADLINE_S

#: Long enough for the slowest target (a leak: 60 s + 10 s after its onset at 1 s).
RUN_S = 75


def _after(start_s: float, value: float, before: float):
    return lambda t: value if t >= start_s else before


def _checkpoint_writes(t: float) -> float:
    return 400e6 if int(t) % 30 in (10, 11, 12) else 2e6


#: Host behaviour a rule needs beside a GPU scenario (the same as its post-run test's).
HOST_VARIANTS: dict[str, Recording] = {
    "dataloader": Recording("input-bound", RUN_S, host=profile(worker_cpu=_after(5, 1.0, 0.4))),
    "main-loader": Recording(
        "input-bound", RUN_S, host=profile(workers=0, main_cpu=_after(5, 1.0, 0.5))
    ),
    "io-wait": Recording(
        "input-bound",
        RUN_S,
        host=profile(iowait=_after(5, 0.3, 0.01), disk_busy=_after(5, 0.95, 0.1)),
    ),
    "launch-pinned": Recording("launch-bound", RUN_S, host=profile(main_cpu=1.0)),
    "swap": Recording(
        "healthy", RUN_S, host=profile(swap_in=lambda t: 50e6 if 30 <= t < 70 else 0.0)
    ),
    "checkpoint-writes": Recording(
        "checkpoint-stall", RUN_S, host=profile(disk_write=_checkpoint_writes)
    ),
    # a TPU job whose processes sit idle: the queue that never drains is a hang
    "tpu-v5e-8-hang-quiet-job": Recording(
        None,
        RUN_S,
        host=profile(main_cpu=0.02, worker_cpu=0.0, cpu=0.03),
        run_id="tpu-v5e-8-hang",
    ),
}
#: Scenarios of the rule tests in tests/analysis/scenarios/.
TEST_SCENARIOS = (
    "fp32-training",
    "idle-reserved",
    "launch-bound",
    "memory-bound",
    "memory-leak",
    "pcie-bound",
)


def _spread_steps(rank: int, t: float) -> float:
    """Four ranks at 0.5 s a step with 2% noise; rank 3 runs 15% slower from the start."""
    noise = 0.01 * ((rank * 7 + int(t) * 3) % 5 - 2)
    return 0.5 * (1.15 if rank == 3 else 1.0) * (1 + noise)


def cases() -> dict[str, Recording]:
    """Every simulated scenario (GPU and TPU; a fabric or storage scenario with its simulated
    sysfs/procfs trees read by the real collectors), the rule tests' scenarios, the host
    variants and a multi-rank job with one slow rank. A TPU scenario's recording has no NVML
    scenario: ``live_run`` serves it."""
    from tests.analysis.test_fabric_storage_rules import simulated_collectors

    out = {}
    for info in list_scenarios():
        loaded = load_scenario(info.name)
        tpu = loaded.tpu is not None
        trees = tuple(s for s in loaded.sources if s in ("fabric", "storage"))
        out[info.name] = Recording(
            None if tpu else info.name,
            RUN_S,
            run_id=info.name,
            collectors=simulated_collectors(info.name, trees) if trees else (),
        )
    out.update({name: Recording(name, RUN_S) for name in TEST_SCENARIOS})
    out.update(HOST_VARIANTS)
    out["rank-spread"] = Recording(
        "healthy", RUN_S, run_id="rank-spread", extra=[step_log(_spread_steps, 4)]
    )
    return out


def _tpu_vm(name: str, root: Path, clock: list[float]) -> SimulatedTpu | None:
    """The simulated TPU VM of scenario ``name`` on the recording's clock (None: no TPU)."""
    scenario = load_scenario(name).tpu if name.startswith("tpu-") else None
    if scenario is None:
        return None
    return SimulatedTpu(scenario, root=root, owner_pids=lambda: [JOB_PID], clock=lambda: clock[0])


@dataclass
class Latency:
    """One rule in one run: its post-run onset, first live showing and target (run seconds)."""

    rule: str
    onset_s: float
    first_live_s: float | None
    target_s: float

    @property
    def latency_s(self) -> float | None:
        return None if self.first_live_s is None else self.first_live_s - self.onset_s

    @property
    def met(self) -> bool:
        return self.latency_s is not None and self.latency_s <= self.target_s


@dataclass
class LiveRun:
    first_live_s: dict[str, float]
    post_run: list[Finding]
    live: LiveAnalysis
    cpu_s: float
    #: The live findings current at the end of the run.
    live_findings: list[dict] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)


def _seconds(ts: datetime) -> float:
    return (ts - datetime(1970, 1, 1)).total_seconds() - T0


def onset_s(rule: Rule, f: Finding) -> float:
    """When the condition of ``f`` began: the start of the episode that made it a finding
    (the ``min_episodes``-th: a second checkpoint stall makes the first one periodic)."""
    windows = finding_windows(f)
    return _seconds(windows[min(rule.min_episodes, len(windows)) - 1][0])


def live_run(
    path: Path,
    spec: Recording,
    *,
    poll_every: int = 1,
    poll_offset: int = 0,
    full_period_s: float = LIVE_FULL_PERIOD_S,
) -> LiveRun:
    """Record ``spec`` with the live analysis polled after every ``poll_every``-th tick (from
    tick ``poll_offset``: its thread's wake-ups against the sampler's), then analyse the file.

    A TPU scenario (``spec.run_id`` names it) is served by a simulated TPU VM whose clock is
    the recording's: set before each tick, to the time that tick samples."""
    from tests.analysis.test_live import fake_session

    hub = SnapshotHub()
    live = LiveAnalysis(full_period_s=full_period_s)
    first: dict[str, float] = {}
    clock = [T0 + 1]
    vm = _tpu_vm(spec.run_id, path.with_suffix(".vm"), clock)
    if vm is not None:
        spec = replace(
            spec, collectors=[lambda: TpuCollector(env=vm.env, deadline=VALUES_DEADLINE_S)]
        )

    def on_start(store: Store) -> None:  # as a session does: its consumers see every tick
        live.attach(fake_session(store, spec.run_id, hub=hub).context)

    def on_tick(now: float, store: Store) -> None:
        clock[0] = now + 1
        if round(now - T0) % poll_every != poll_offset % poll_every:
            return
        live.poll()
        for f in live.context.findings:
            first.setdefault(str(f["rule"]), now - T0)

    try:
        record(path, spec, on_tick=on_tick, hub=hub, on_start=on_start)
    finally:
        live.stop()
        if vm is not None:
            vm.uninstall()
    con = connect(str(path))
    try:
        post_run = analyze_run(con, spec.run_id, store=False)
    finally:
        con.close()
    run = LiveRun(first, post_run, live, live.cost.cpu_s, [dict(f) for f in live.context.findings])
    by_rule: dict[str, tuple[float, float]] = {}
    for f in post_run:
        rule = RULES_BY_ID.get(f.rule)
        if rule is None:
            continue
        at = onset_s(rule, f)
        target = rule.min_duration_for(f) + LIVE_LATENCY_SLACK_S
        if f.rule not in by_rule or at < by_rule[f.rule][0]:
            by_rule[f.rule] = (at, target)
    run.latencies = [
        Latency(rule, at, first.get(rule), target) for rule, (at, target) in sorted(by_rule.items())
    ]
    return run


def live_run_delayed(path: Path, spec: Recording, *, delay_ticks: int) -> LiveRun:
    """Round ``delay_ticks`` of the benchmark: 0 polls every tick; 1 and 2 every other tick,
    in either phase (an analysis thread waking up to a tick late)."""
    if delay_ticks == 0:
        return live_run(path, spec)
    return live_run(path, spec, poll_every=2, poll_offset=delay_ticks)
