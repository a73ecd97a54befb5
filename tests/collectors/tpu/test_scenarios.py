"""TPU scenarios: each serves a minute; a bad [tpu] table is a one-line error."""

from __future__ import annotations

import pytest

from collectors.sim import ScenarioError, list_scenarios, load_scenario
from collectors.sim.scenario import parse_scenario

TPU = sorted(i.name for i in list_scenarios() if i.name.startswith("tpu-"))


def test_scenarios_list_the_tpu_ones_beside_the_gpu_ones():
    infos = {i.name: i for i in list_scenarios()}
    assert len(TPU) >= 6 and "healthy" in infos
    assert infos["tpu-v5e-8-healthy"].hardware == "8x TPU v5e"
    assert infos["tpu-v5e-8-healthy"].gpu_count == 0
    assert infos["tpu-7x-multislice-dcn-bound"].hardware == "4x TPU7x"
    assert load_scenario("healthy").tpu is None  # GPU scenarios unchanged


@pytest.mark.parametrize("name", TPU)
def test_every_tpu_scenario_records_a_minute(tpu_vm, clock, name):
    sim, collector = tpu_vm(name)
    seen = set()
    for _ in range(60):
        batch = collector.collect(clock.advance(1))
        seen |= set(batch.metrics)
    assert {"tpu.duty_cycle", "tpu.memory.used", "tpu.runtime.up"} <= seen


def test_the_memory_pressure_scenario_fills_hbm(tpu_vm, clock):
    sim, collector = tpu_vm("tpu-v5p-8-memory-pressure")
    used = []
    for _ in range(50):
        b = collector.collect(clock.advance(1))
        used += [
            v
            for e, m, v in zip(b.entities, b.metrics, b.values)
            if (e, m) == ("tpu0", "tpu.memory.used")
        ]
    assert used[0] < 0.65 * 95 * 2**30 and used[-1] > 0.95 * 95 * 2**30


def test_the_input_bound_scenario_has_low_duty_and_an_empty_queue_and_healthy_does_not(
    tpu_vm, clock
):
    def levels(name):
        sim, collector = tpu_vm(name)
        out = {}
        for _ in range(10):
            b = collector.collect(clock.advance(1))
            out = {m: v for e, m, v in zip(b.entities, b.metrics, b.values) if e == "tpu0"}
        collector.close()
        sim.uninstall()
        return out

    bound, healthy = levels("tpu-v5e-8-input-bound"), levels("tpu-v5e-8-healthy")
    assert bound["tpu.duty_cycle"] < 0.5 and bound["tpu.hlo.queue.size"] == 0
    assert healthy["tpu.duty_cycle"] > 0.9 and healthy["tpu.hlo.queue.size"] > 0


@pytest.mark.parametrize(
    ("tpu", "message"),
    [
        ('chip = "v9"', "chip 'v9' unknown"),
        ('chip = "v5e"\nchips = 0', "chips must be an integer"),
        ('chip = "v5e"\nruntime_up_s = 10\nruntime_lost_s = 5', "runtime_lost_s must be after"),
        ('chip = "v5e"\nwarp = 1', "unknown key 'warp'"),
        ('chip = "v5e"\n[tpu.workload]\nduty_cycle = 1.5', "fraction"),
        ('chip = "v5e"\n[tpu.workload]\nflux = 1', "unknown signal 'flux'"),
        ('chip = "v5e"\n[[tpu.effects]]\nstart_s = 1', "needs set or ramp"),
        ('chip = "v5e"\nchips = 2\n[tpu.overrides.4]\nduty_cycle = 0.1', "chip 4 out of range"),
    ],
)
def test_bad_tpu_tables_are_one_line_errors(tpu, message):
    with pytest.raises(ScenarioError, match=message) as info:
        parse_scenario(f"[tpu]\n{tpu}\n", "bad.toml")
    assert "\n" not in str(info.value) and str(info.value).startswith("bad.toml: ")


def test_a_scenario_without_gpus_or_tpus_still_needs_hardware():
    with pytest.raises(ScenarioError, match=r"missing \[hardware\] table"):
        parse_scenario("summary = 'nothing'\n")
