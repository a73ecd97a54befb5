"""Simulated readings keep the physical and NVML semantics an agent relies on."""

from __future__ import annotations

import pynvml
import pytest

from collectors.sim import install, load_scenario
from collectors.sim.engine import TICK_S
from collectors.sim.scenario import parse_scenario

THERMAL_BITS = (
    pynvml.nvmlClocksEventReasonSwThermalSlowdown | pynvml.nvmlClocksEventReasonHwThermalSlowdown
)


def _fields(h, *ids):
    values = pynvml.nvmlDeviceGetFieldValues(h, list(ids))
    assert all(v.nvmlReturn == pynvml.NVML_SUCCESS for v in values)
    return [
        v.value.ullVal
        if v.valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        else v.value.uiVal
        for v in values
    ]


def test_cumulative_counters_only_grow(simulate, clock):
    simulate("checkpoint-stall")
    h = pynvml.nvmlDeviceGetHandleByIndex(1)
    ids = [
        pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES,
        pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES,
        (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 0),
        (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, 9),
    ]
    previous = None
    for _ in range(90):
        clock.advance(0.5)
        current = _fields(h, *ids) + [pynvml.nvmlDeviceGetTotalEnergyConsumption(h)]
        if previous:
            assert all(c >= p for c, p in zip(current, previous))
        previous = current


def test_energy_is_the_integral_of_power(simulate, clock):
    simulate("input-bound")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(4.0 + TICK_S / 2)  # read mid-tick so float steps never skip a tick
    start = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    integral_mj = 0.0
    for _ in range(250):  # 5 s of bursty load, read at the driver's refresh rate
        clock.advance(TICK_S)
        (instant_mw,) = _fields(h, pynvml.NVML_FI_DEV_POWER_INSTANT)
        integral_mj += instant_mw * TICK_S
    delta = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) - start
    assert delta == pytest.approx(integral_mj, rel=0.0005)


def test_average_power_agrees_with_energy_over_a_second(simulate, clock):
    simulate("healthy")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(5.0)
    before = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    clock.advance(1.0)
    delta_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) - before
    assert pynvml.nvmlDeviceGetPowerUsage(h) == pytest.approx(delta_mj, rel=0.01)  # mW over 1 s


def test_thermal_throttle_bits_come_with_lower_clocks(simulate, clock):
    simulate("throttled-thermal")
    hot, cool = pynvml.nvmlDeviceGetHandleByIndex(2), pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(10)
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(hot) & THERMAL_BITS == 0
    normal_clock = pynvml.nvmlDeviceGetClockInfo(hot, pynvml.NVML_CLOCK_SM)
    clock.advance(20)
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(hot) & THERMAL_BITS == THERMAL_BITS
    assert pynvml.nvmlDeviceGetClockInfo(hot, pynvml.NVML_CLOCK_SM) <= 0.65 * normal_clock
    assert pynvml.nvmlDeviceGetTemperature(hot, pynvml.NVML_TEMPERATURE_GPU) >= 86
    assert pynvml.nvmlDeviceGetPowerUsage(hot) < pynvml.nvmlDeviceGetPowerUsage(cool)
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(cool) == 0
    assert pynvml.nvmlDeviceGetClockInfo(cool, pynvml.NVML_CLOCK_SM) == normal_clock
    clock.advance(20)  # the episode ends at 45 s
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(hot) & THERMAL_BITS == 0


def test_power_cap_keeps_power_under_the_limit_by_lowering_clocks(simulate, clock):
    simulate("power-capped")
    h = pynvml.nvmlDeviceGetHandleByIndex(4)
    clock.advance(5)
    assert pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == 700_000
    uncapped = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
    for _ in range(20):
        clock.advance(1.3)
        if clock.now < 1_700_000_011.5:
            continue
        assert pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == 450_000
        assert pynvml.nvmlDeviceGetPowerUsage(h) <= 450_000
        (instant,) = _fields(h, pynvml.NVML_FI_DEV_POWER_INSTANT)
        assert instant <= 450_000
        assert (
            pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)
            & pynvml.nvmlClocksEventReasonSwPowerCap
        )
        assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) < uncapped


def test_idle_gpu_reports_idle_reason_and_low_clocks(simulate, clock):
    simulate("checkpoint-stall")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(13)  # inside the 10-16 s checkpoint
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(h) & pynvml.nvmlClocksEventReasonGpuIdle
    assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == 345
    assert pynvml.nvmlDeviceGetUtilizationRates(h).gpu == 0


def test_memory_never_exceeds_total(simulate, clock):
    simulate("memory-pressure")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    seen = []
    for _ in range(40):
        clock.advance(1)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        assert mem.used + mem.reserved + mem.free == mem.total
        seen.append(mem.used)
    assert seen[20] > seen[5] + (5 << 30)  # grows ~0.5 GiB/s
    assert seen[36] == (81559 - 581) << 20  # pinned at the ceiling
    assert seen[39] < seen[36]  # allocator reset at 40 s


def test_same_scenario_and_clock_give_identical_readings(clock):
    readings = []
    for _ in range(2):
        start = clock.now
        with install("straggler", clock=clock):
            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(5)
            run = []
            for _ in range(10):
                clock.advance(0.37)
                run.append(
                    (
                        pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
                        pynvml.nvmlDeviceGetPowerUsage(h),
                        pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
                    )
                )
            pynvml.nvmlShutdown()
        readings.append(run)
        clock.now = start
    assert readings[0] == readings[1]


def test_clock_going_backwards_does_not_rewind_counters(simulate, clock):
    simulate("healthy")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(5)
    energy = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    clock.advance(-3)
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == energy


COUNTER_TOML = """
summary = "counter reset and 64-bit wrap"
[hardware]
model = "h100-sxm-80gb"
count = 2
[counters]
offset = 18446744073609551616  # 2**64 - 1e8: PCIe/NVLink/energy counters wrap within a second
[workload]
busy = 0.9
sm_activity = 0.8
pcie_tx_gbps = 2.0
nvlink_tx_gbps = 50.0
[[effects]]
label = "driver reload"
gpus = [1]
at_s = 5
counter_reset = true
"""


def test_counters_wrap_at_64_bits_and_reset_on_driver_reload(simulate, clock):
    simulate(parse_scenario(COUNTER_TOML))
    h0, h1 = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
    (first,) = _fields(h0, pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES)
    assert first >= (1 << 64) - 10**8
    clock.advance(1)
    (wrapped,) = _fields(h0, pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES)
    assert wrapped < first  # 2 GB/s for 1 s went past 2**64
    assert (wrapped - first) % (1 << 64) == pytest.approx(2e9, rel=0.05)
    clock.advance(3.5)
    before_reset = pynvml.nvmlDeviceGetTotalEnergyConsumption(h1)
    clock.advance(1)
    after_reset = pynvml.nvmlDeviceGetTotalEnergyConsumption(h1)
    assert (after_reset - (1 << 64) + 10**8) % (1 << 64) < (before_reset - (1 << 64) + 10**8) % (
        1 << 64
    )
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h0) > after_reset  # GPU 0 was not reset


def test_hang_freezes_activity_and_traffic(simulate, clock):
    simulate("hang")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(25)
    link = (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 0)
    first = (
        _fields(h, link),
        pynvml.nvmlDeviceGetPowerUsage(h),
        pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
    )
    clock.advance(10)
    second = (
        _fields(h, link),
        pynvml.nvmlDeviceGetPowerUsage(h),
        pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
    )
    assert first == second and first[2] == 100


def test_scenario_object_is_reusable_across_installs(clock):
    scenario = load_scenario("healthy")
    for _ in range(2):
        with install(scenario, clock=clock):
            pynvml.nvmlInit()
            assert pynvml.nvmlDeviceGetCount() == 8
            pynvml.nvmlShutdown()
