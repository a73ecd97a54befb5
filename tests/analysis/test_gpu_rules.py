"""GPU-side rules on simulated NVML scenarios: each must fire at the right entity and window,
and stay silent on the healthy run and on near-miss scenarios."""

from __future__ import annotations

import pytest

from agent.analysis.rules import ALL_RULES
from tests.analysis.expect import assert_window, entities, of_rule, windows_s
from tests.analysis.recording import Recording, profile

RUN_S = 90
ALL8 = {f"gpu{i}" for i in range(8)}
ALL4 = {f"gpu{i}" for i in range(4)}


@pytest.fixture
def healthy(analysed):
    return analysed("healthy", Recording("healthy", RUN_S))


def test_healthy_run_yields_no_warnings(healthy):
    assert [f for f in healthy if f.severity != "info"] == []


@pytest.mark.parametrize("rule", [r.id for r in ALL_RULES])
def test_every_rule_is_silent_on_the_healthy_run(healthy, rule):
    assert of_rule(healthy, rule) == []


@pytest.mark.parametrize(
    ("scenario", "rule", "expected", "start_s", "end_s"),
    [
        ("hang", "hang", {"job"}, 20, RUN_S),
        ("straggler", "straggler", {"gpu5"}, 0, RUN_S),
        ("comm-bound", "comm-bound", ALL8, 1, RUN_S),
        ("throttled-thermal", "throttling", {"gpu2", "gpu3"}, 15, 45),
        ("power-capped", "throttling", ALL8, 10, RUN_S),
        ("pcie-bound", "h2d-transfer", ALL4, 10, RUN_S),
        ("fp32-training", "low-tensor-core-use", ALL4, 1, RUN_S),
        ("memory-bound", "memory-bandwidth-bound", ALL4, 1, RUN_S),
        ("memory-leak", "gpu-memory-pressure", ALL4, 0, RUN_S),
        ("idle-reserved", "idle-reserved-gpu", {"gpu3"}, 0, RUN_S),
        ("input-bound", "gpu-starvation", ALL8, 5, RUN_S),
    ],
)
def test_scenario_triggers_rule_on_entity_and_window(
    analysed, scenario, rule, expected, start_s, end_s
):
    findings = analysed(scenario, Recording(scenario, RUN_S))
    assert entities(findings, rule) == expected
    for f in of_rule(findings, rule):
        assert_window(f, start_s, end_s)
        assert f.summary and f.next_step and f.evidence["metrics"]


def test_hang_is_critical_only_after_two_minutes_and_explains_idle_gpus(analysed):
    findings = analysed("hang", Recording("hang", RUN_S))
    (hang,) = of_rule(findings, "hang")
    assert hang.severity == "warning" and hang.evidence["kind"] == "spinning"
    assert of_rule(findings, "gpu-starvation") == []


def test_thermal_throttling_names_the_cause_and_spares_cool_gpus(analysed):
    findings = analysed("throttled-thermal", Recording("throttled-thermal", RUN_S))
    for f in of_rule(findings, "throttling"):
        assert "thermal" in f.summary and f.severity == "critical"
        assert f.evidence["clock_share"] == pytest.approx(0.6, abs=0.05)


def test_memory_pressure_flags_each_spell_at_the_ceiling(analysed):
    findings = analysed("memory-pressure", Recording("memory-pressure", RUN_S))
    near_full = [
        f for f in of_rule(findings, "gpu-memory-pressure") if f.evidence["kind"] == "near_capacity"
    ]
    assert {f.entity for f in near_full} == ALL8
    for f in near_full:
        spells = windows_s(f)
        assert len(spells) == 2  # the allocator resets every 40 s
        assert 20 <= spells[0][0] <= 35 and spells[0][1] <= 42


def test_leak_projects_time_to_full(analysed):
    findings = analysed("memory-leak", Recording("memory-leak", RUN_S))
    leak = of_rule(findings, "gpu-memory-pressure")[0]
    assert leak.evidence["kind"] == "leak"
    assert leak.evidence["slope_bytes_per_s"] == pytest.approx(0.06 * 2**30, rel=0.05)


def test_idle_reserved_gpu_is_not_also_called_a_straggler(analysed):
    findings = analysed("idle-reserved", Recording("idle-reserved", RUN_S))
    assert of_rule(findings, "straggler") == [] and of_rule(findings, "gpu-starvation") == []


def test_gpu_lost_and_xid_are_hardware_faults_at_their_time(analysed):
    lost = of_rule(analysed("gpu-lost", Recording("gpu-lost", RUN_S)), "hardware-fault")
    assert {f.entity for f in lost} == {"gpu3"}
    assert all(f.severity == "critical" for f in lost)
    assert any(f.evidence.get("event") == "gpu_lost" for f in lost)
    assert all(abs(windows_s(f)[0][0] - 25) <= 2 for f in lost), [
        (f.evidence.get("event"), windows_s(f)) for f in lost
    ]

    xid = of_rule(analysed("xid-error", Recording("xid-error", RUN_S)), "hardware-fault")
    by_gpu = {(f.entity, f.evidence.get("xid")): f for f in xid}
    assert by_gpu[("gpu6", 94)].severity == "critical"
    assert by_gpu[("gpu2", 31)].severity == "warning"
    assert abs(windows_s(by_gpu[("gpu6", 94)])[0][0] - 20) <= 2
    ecc = [f for f in xid if f.entity == "gpu6" and "ecc_uncorrected" in f.evidence]
    assert ecc and ecc[0].evidence["ecc_uncorrected"] >= 1


@pytest.mark.parametrize(
    ("scenario", "silent_rules"),
    [
        ("input-bound", ["dataloader-bound", "io-bound", "hang"]),  # healthy host: cause unknown
        ("checkpoint-stall", ["checkpoint-stall", "hang"]),  # no write bursts on the host
        ("straggler", ["comm-bound", "hang", "throttling"]),
        ("comm-bound", ["launch-bound", "straggler", "hang"]),
        ("power-capped", ["straggler", "hardware-fault"]),
    ],
)
def test_near_miss_scenarios_leave_other_rules_silent(analysed, scenario, silent_rules):
    findings = analysed(scenario, Recording(scenario, RUN_S))
    for rule in silent_rules:
        assert of_rule(findings, rule) == [], rule


def test_launch_bound_needs_the_main_process_pinned(analysed):
    pinned = analysed(
        "launch-bound-pinned", Recording("launch-bound", RUN_S, host=profile(main_cpu=1.0))
    )
    assert entities(pinned, "launch-bound") == ALL4
    relaxed = analysed("launch-bound", Recording("launch-bound", RUN_S))
    assert of_rule(relaxed, "launch-bound") == []
