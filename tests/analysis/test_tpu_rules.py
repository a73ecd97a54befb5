"""Rules on simulated TPU VMs: the real TPU collector reads a simulated libtpu (gRPC on
127.0.0.1) on the recording's fake clock, beside synthetic host and process collectors. Each
TPU rule fires on its scenario and stays silent on a near miss; the role-based general rules
(hang through the queue role, memory pressure) apply to TPU chips unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.analysis.rules import ALL_RULES
from agent.model import Batch
from agent.source import CollectContext, Collector
from collectors.sim.scenario import load_scenario
from collectors.sim.tpu.vm import SimulatedTpu
from collectors.tpu.collector import TpuCollector
from tests.analysis.expect import assert_window, entities, of_rule
from tests.analysis.recording import JOB_PID, T0, Recording, profile
from tests.helpers import VALUES_DEADLINE_S

RUN_S = 60
CHIPS8 = {f"tpu{i}" for i in range(8)}
QUIET_JOB = profile(main_cpu=0.02, worker_cpu=0.0, cpu=0.03)


class TpuOnRecordingClock(Collector):
    """The TPU source against a simulated VM whose clock is the sampler's tick time."""

    source = "tpu"

    def __init__(self, scenario: str, root: Path) -> None:
        self.now = T0
        tpu = load_scenario(scenario).tpu
        assert tpu is not None, scenario
        self.sim = SimulatedTpu(tpu, root=root, owner_pids=lambda: [JOB_PID], clock=self._clock)
        self.inner = TpuCollector(env=self.sim.env, deadline=VALUES_DEADLINE_S)

    def _clock(self) -> float:
        return self.now

    def start(self, ctx: CollectContext) -> None:
        self.inner.start(ctx)

    def collect(self, now: float) -> Batch:
        self.now = now
        return self.inner.collect(now)

    def close(self) -> None:
        self.inner.close()
        self.sim.uninstall()


def _spec(scenario: str, root: Path, host=None, seconds: int = RUN_S) -> Recording:
    return Recording(
        None,
        seconds,
        host=host or profile(),
        collectors=[lambda: TpuOnRecordingClock(scenario, root)],
    )


@pytest.fixture
def tpu_run(analysed, tmp_path_factory):
    """``tpu_run(scenario, host=None, seconds=RUN_S)`` → post-run findings (recorded once)."""

    def run(scenario: str, host=None, seconds: int = RUN_S, key: str | None = None):
        root = tmp_path_factory.mktemp("vm")
        return analysed(key or f"tpu:{scenario}", _spec(scenario, root, host, seconds))

    return run


def test_healthy_tpu_run_yields_no_warnings(tpu_run):
    findings = tpu_run("tpu-v5e-8-healthy")
    assert [f for f in findings if f.severity != "info"] == []


@pytest.mark.parametrize("rule", [r.id for r in ALL_RULES])
def test_every_rule_is_silent_on_the_healthy_tpu_run(tpu_run, rule):
    assert of_rule(tpu_run("tpu-v5e-8-healthy"), rule) == []


@pytest.mark.parametrize(
    ("scenario", "rule", "start_s"),
    [
        ("tpu-v5e-8-input-bound", "input-bound", 5),
        ("tpu-v5e-8-transfer-bound", "transfer-latency-bound", 5),
        ("tpu-7x-multislice-dcn-bound", "collective-latency-bound", 8),
    ],
)
def test_tpu_scenario_triggers_its_rule_on_the_job_and_window(tpu_run, scenario, rule, start_s):
    findings = tpu_run(scenario)
    assert entities(findings, rule) == {"job"}
    (f,) = of_rule(findings, rule)
    assert_window(f, start_s, RUN_S)
    assert f.summary and f.next_step and f.evidence["metrics"]
    assert "tpu" not in f.rule
    # the symptom (starved chips) is explained by the cause: one finding, not nine
    assert of_rule(findings, "gpu-starvation") == []


@pytest.mark.parametrize(
    ("scenario", "rule"),
    [
        ("tpu-v5e-8-healthy", "input-bound"),
        ("tpu-v5e-8-transfer-bound", "input-bound"),  # programs queued: not waiting on input
        ("tpu-v5e-8-healthy", "transfer-latency-bound"),
        ("tpu-v5e-8-input-bound", "transfer-latency-bound"),  # slow but rare transfers
        ("tpu-7x-multislice-dcn-bound", "transfer-latency-bound"),
        ("tpu-7x-multislice-overlapped", "collective-latency-bound"),  # duty cycle holds
        ("tpu-v5e-8-transfer-bound", "collective-latency-bound"),  # single slice
        ("tpu-v3-8-healthy", "collective-latency-bound"),
    ],
)
def test_tpu_near_miss_does_not_trigger_the_rule(tpu_run, scenario, rule):
    assert of_rule(tpu_run(scenario), rule) == []


def test_overlapped_multislice_run_yields_no_warnings(tpu_run):
    findings = tpu_run("tpu-7x-multislice-overlapped")
    assert [f for f in findings if f.severity != "info"] == []


def test_input_bound_names_the_empty_queue_and_jax_advice(tpu_run):
    (f,) = of_rule(tpu_run("tpu-v5e-8-input-bound"), "input-bound")
    assert "queue ran empty" in f.summary and "TPUs (tpu0, tpu1, tpu2" in f.summary
    assert f.evidence["queue"] == pytest.approx(0.0, abs=0.1)
    assert f.evidence["idle_share"] == pytest.approx(0.62, abs=0.05)
    assert "prefetch_to_device" in f.next_step  # the TPU source's declared advice
    assert "tpu.hlo.queue.size" in f.evidence["metrics"]


def test_transfer_bound_reports_the_slow_direction_and_time_share(tpu_run):
    (f,) = of_rule(tpu_run("tpu-v5e-8-transfer-bound"), "transfer-latency-bound")
    assert "host → device transfers took 6." in f.summary
    assert f.evidence["h2d_p50_s"] == pytest.approx(0.006, rel=0.25)
    assert f.evidence["transfer_time_share"] > 0.5
    assert "tpu.host_to_device.transfer.p99" in f.evidence["metrics"]


def test_collective_bound_reports_dcn_and_collective_percentiles(tpu_run):
    (f,) = of_rule(tpu_run("tpu-7x-multislice-dcn-bound"), "collective-latency-bound")
    assert "cross-slice (DCN) transfers" in f.summary and "collectives took" in f.summary
    assert f.evidence["dcn_p99_s"] > 0.005 and f.evidence["collective_p99_s"] > 0.01
    assert f.evidence["duty"] == pytest.approx(0.45, abs=0.05)
    assert "tpu.dcn.transfer.p99" in f.evidence["metrics"]


def test_hang_on_tpus_is_a_queue_that_never_drains_at_flat_duty(tpu_run):
    findings = tpu_run("tpu-v5e-8-hang", QUIET_JOB, 90, key="tpu-hang-quiet")
    (hang,) = of_rule(findings, "hang")
    assert hang.entity == "job" and hang.evidence["kind"] == "queue_stuck"
    assert_window(hang, 20, 90)
    assert "4 programs queued that never drained" in hang.summary
    assert "tpu-info" in hang.next_step and "NCCL" not in hang.next_step
    assert "tpu.hlo.queue.size" in hang.evidence["metrics"]


def test_a_saturated_tpu_with_a_busy_host_is_not_a_hang(tpu_run):
    # the same chips, flat at 100% with a full queue, but the job's processes keep working
    findings = tpu_run("tpu-v5e-8-hang", None, 90, key="tpu-hang-busy-host")
    assert of_rule(findings, "hang") == []


def test_memory_pressure_on_tpu_chips_comes_from_the_role_based_rule(tpu_run):
    findings = tpu_run("tpu-v5p-8-memory-pressure")
    assert entities(findings, "gpu-memory-pressure") == {f"tpu{i}" for i in range(4)}


def test_tpu_rules_never_name_a_source():
    rules = Path(__file__).resolve().parents[2] / "agent" / "analysis" / "rules"
    for path in sorted(rules.glob("tpu*.py")):
        code = path.read_text()
        assert not re.search(r"""["']tpu["']|source\s*==""", code), path.name


def test_the_report_on_a_tpu_run_speaks_of_tpus_and_their_tools(recorded, tmp_path_factory, capsys):
    from agent.app.cli import main

    scenario = "tpu-v5e-8-input-bound"
    db, _ = recorded(f"tpu:{scenario}", _spec(scenario, tmp_path_factory.mktemp("vm")))
    assert main(["report", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "8 TPU(s): TPU v5e" in out and re.search(r"TPU utilization\s+p50 38%", out)
    assert "[input-bound] on job" in out and "prefetch_to_device" in out
    assert "GPU" not in out and "nsys" not in out and "NVIDIA" not in out


def test_input_bound_also_fires_on_saturated_input_workers_with_programs_queued(tpu_run):
    busy_loaders = profile(worker_cpu=0.97)
    findings = tpu_run("tpu-v5e-8-transfer-bound", busy_loaders, key="tpu-transfer-busy-loaders")
    (f,) = of_rule(findings, "input-bound")
    assert "input workers were saturated" in f.summary and "queue ran empty" not in f.summary
    assert of_rule(findings, "dataloader-bound") == []  # explained once, by the TPU evidence
