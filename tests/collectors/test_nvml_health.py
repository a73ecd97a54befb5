"""Health and failure paths: lost GPUs, XID events, counter wraps and resets, flaky queries."""

from __future__ import annotations

import ctypes

import pynvml
import pytest

from agent.errors import CollectorUnavailable
from agent.source import CollectContext
from collectors.nvml import EVENT_WAIT_MS, NvmlCollector
from tests.collectors.nvml_harness import RigFactory, count_calls, scenario_toml, series, values

U64 = 1 << 64


@pytest.fixture
def rig():
    factory = RigFactory()
    yield factory
    factory.close()


def test_a_gpu_lost_mid_run_stops_being_queried_while_the_others_go_on(rig):
    r = rig(
        scenario_toml(
            "l4",
            4,
            extra="""
[[effects]]
label = "fell off the bus"
gpus = [2]
at_s = 2.5
lost = true
""",
        ),
        events=True,
    )
    before = values(r.tick()) | values(r.tick())
    assert ("gpu2", "gpu.utilization") in before
    lost_batch = r.tick()
    after = r.run(3)
    [lost] = r.events("gpu_lost")
    assert lost.entity == "gpu2" and lost.detail["severity"] == "error"
    assert lost_batch.entity_attrs["gpu2"]["lost"] is True
    queried = {m for b in after for e, m in zip(b.entities, b.metrics) if e.startswith("gpu2")}
    assert queried <= {"gpu.xid"}  # only the XID count moves (by the XID 79 event)
    for gpu in ("gpu0", "gpu1", "gpu3"):
        assert len(series(after, gpu, "gpu.utilization")) == 3
    assert r.collector.devices[2].lost and not r.collector.devices[0].lost
    assert not r.events("nvml_error")
    xids = r.wait_for_event("xid")  # the driver also reports XID 79 (fell off the bus)
    assert [(e.entity, e.detail["xid"]) for e in xids] == [("gpu2", 79)]


def test_named_gpu_lost_scenario_loses_gpu3_of_eight_h100s(rig):
    r = rig("gpu-lost")
    r.run(6, 5.0)  # gpu3 falls off the bus at 25 s
    assert [e.entity for e in r.events("gpu_lost")] == ["gpu3"]
    last = values(r.batches[-1])
    assert ("gpu3", "gpu.utilization") not in last
    assert all((f"gpu{i}", "gpu.sm.activity") in last for i in (0, 1, 2, 4, 5, 6, 7))


def test_gpu_lost_at_start_is_an_event_not_a_crash(rig):
    r = rig(
        scenario_toml(
            "l4",
            2,
            extra="""
[[effects]]
label = "already gone"
gpus = [1]
at_s = 0
lost = true
""",
        )
    )
    batch = r.tick()
    assert [e.entity for e in batch.events if e.kind == "gpu_lost"] == ["gpu1"]
    assert {e for e in batch.entities if not e.startswith("gpu0")} == set()


def test_xid_events_arrive_in_the_next_batch_and_count_per_gpu(rig):
    r = rig(
        scenario_toml(
            "h100-sxm-80gb",
            2,
            extra="""
[[effects]]
label = "MMU fault"
gpus = [1]
at_s = 1.5
xid = 31
""",
        ),
        events=True,
    )
    r.tick()
    r.tick()
    [xid] = r.wait_for_event("xid")
    assert (xid.entity, xid.detail["xid"], xid.detail["severity"]) == ("gpu1", 31, "error")
    assert r.clock.now - 1.0 <= xid.ts <= r.clock.now  # stamped with the agent clock
    last = values(r.tick())
    assert last["gpu1", "gpu.xid"] == 1 and last["gpu0", "gpu.xid"] == 0


def test_static_limits_are_read_once_and_again_after_an_xid(rig):
    calls = {}

    def count(sim):
        calls["max clocks"] = count_calls(sim, "nvmlDeviceGetMaxClockInfo")

    extra = '[[effects]]\nlabel = "MMU fault"\ngpus = [1]\nat_s = 3.5\nxid = 31\n'
    r = rig(scenario_toml("h100-sxm-80gb", 2, extra=extra), events=True, before_start=count)
    probed = calls["max clocks"][0]
    r.run(3)
    assert calls["max clocks"][0] == probed  # not asked again while nothing happened
    r.tick()
    r.wait_for_event("xid")
    r.run(2)
    assert calls["max clocks"][0] == probed + 2  # gpu1's SM and memory maxima, once
    assert values(r.batches[-1])["gpu1", "gpu.clock.sm.max"] > 0


def test_ecc_counters_and_row_remaps_follow_an_uncorrectable_error(rig):
    r = rig("xid-error", events=True)
    r.run(19)
    assert values(r.batches[-1])["gpu6", "gpu.ecc.volatile.uncorrected"] == 0
    v = values(r.tick(2.0))
    assert v["gpu6", "gpu.ecc.volatile.uncorrected"] == 1
    assert v["gpu6", "gpu.ecc.aggregate.uncorrected"] == 1
    assert v["gpu6", "gpu.remapped_rows.uncorrectable"] == 1
    assert v["gpu6", "gpu.remapped_rows.pending"] == 1
    assert v["gpu5", "gpu.ecc.volatile.uncorrected"] == 0
    assert [e.detail["xid"] for e in r.wait_for_event("xid")] == [94]


def test_byte_counters_stay_continuous_across_a_64_bit_wrap(rig):
    r = rig(scenario_toml("h100-sxm-80gb", extra=f"[counters]\noffset = {U64 - int(2.5e9)}"))
    r.run(4)
    raw = [values(b)["gpu0", "gpu.pcie.tx_bytes"] for b in r.batches]
    rates = series(r.batches, "gpu0", "gpu.pcie.tx_throughput")
    assert r.sim.truth(0).pcie_tx_bytes < 1e12  # the driver's counter did wrap
    assert all(b > a for a, b in zip(raw, raw[1:]))
    assert rates == pytest.approx([2e9] * 3, rel=0.01)  # no gap, no spike at the wrap
    # NVLink KiB counters derive from the wrapping byte counters, so they wrap at 2**54 KiB.
    link_total = series(r.batches, "gpu0", "gpu.nvlink.tx_bytes")
    assert all(b > a for a, b in zip(link_total, link_total[1:]))
    assert series(r.batches, "gpu0", "gpu.nvlink.tx_throughput") == pytest.approx(
        [36e9] * 3, rel=0.01
    )


def test_a_counter_reset_adds_no_negative_or_huge_step(rig):
    r = rig(
        scenario_toml(
            "h100-sxm-80gb",
            extra="""
[[effects]]
label = "driver reload"
at_s = 2.5
counter_reset = true
""",
        )
    )
    r.run(5)
    for entity, metric, rate_metric, expected in (
        ("gpu0", "gpu.pcie.rx_bytes", "gpu.pcie.rx_throughput", 3e9),
        ("gpu0", "gpu.nvlink.tx_bytes", "gpu.nvlink.tx_throughput", 36e9),
        ("gpu0/nvlink5", "gpu.nvlink.rx_bytes", "gpu.nvlink.rx_throughput", 27e9 / 18),
    ):
        totals = series(r.batches, entity, metric)
        rates = series(r.batches, entity, rate_metric)
        assert all(b >= a for a, b in zip(totals, totals[1:])), metric
        assert len(rates) == 3  # the interval with the reset has no rate ...
        assert rates == pytest.approx([expected] * 3, rel=0.05)  # ... and none is a spike
    energy = series(r.batches, "gpu0", "gpu.energy")
    assert all(b >= a for a, b in zip(energy, energy[1:]))
    assert r.sim.truth(0).energy_mj / 1000 < energy[-1]  # the driver restarted from zero


def test_a_failing_query_is_one_rate_limited_event_and_the_tick_goes_on(rig):
    r = rig(scenario_toml("l4", 2))
    driver = r.sim.driver
    original = driver.nvmlDeviceGetTemperature
    failing = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p)(
        lambda *_: pynvml.NVML_ERROR_UNKNOWN
    )
    driver.nvmlDeviceGetTemperature = failing
    pynvml._nvmlGetFunctionPointer_cache.clear()
    try:
        flaky = r.run(3)
    finally:
        driver.nvmlDeviceGetTemperature = original
        pynvml._nvmlGetFunctionPointer_cache.clear()
    errors = r.events("nvml_error")
    assert sorted(e.entity for e in errors) == ["gpu0", "gpu1"]  # once per GPU, not per tick
    assert errors[0].detail["query"] == "temperature" and "Unknown" in errors[0].detail["error"]
    assert not any(m == "gpu.temperature" for b in flaky for m in b.metrics)
    assert all(("gpu0", "gpu.power") in values(b) for b in flaky)
    assert ("gpu0", "gpu.temperature") in values(r.tick())


def test_without_nvml_start_raises_collector_unavailable_with_a_hint(monkeypatch):
    def no_library(*_args, **_kwargs):
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", no_library)
    with pytest.raises(CollectorUnavailable, match="--simulate"):
        NvmlCollector().start(CollectContext())


def test_with_the_default_event_wait_an_xid_arrives_and_close_ends_the_thread(rig):
    """The XID thread's idle wait is 1 s (it wakes half as often as at 500 ms): an event still
    ends a wait at once, and ``close`` outlasts the wait, so the thread has ended and the
    event set is freed when it returns (never a thread left waiting on a freed set)."""
    freed: list[list[int]] = []
    r = rig(
        scenario_toml(
            "h100-sxm-80gb",
            2,
            extra="""
[[effects]]
label = "MMU fault"
gpus = [0]
at_s = 1.5
xid = 31
""",
        ),
        events=True,
        event_timeout_ms=None,
        before_start=lambda sim: freed.append(count_calls(sim, "nvmlEventSetFree")),
    )
    watcher = r.collector.events
    assert watcher is not None and watcher.timeout_ms == EVENT_WAIT_MS == 1000
    thread = watcher._thread
    assert thread is not None and thread.is_alive()
    r.tick()
    r.tick()
    [xid] = r.wait_for_event("xid")
    assert (xid.entity, xid.detail["xid"]) == ("gpu0", 31)
    r.collector.close()
    assert not thread.is_alive()
    assert freed[0] == [1]


def test_close_shuts_nvml_down_once(rig):
    r = rig(scenario_toml("l4"))
    r.tick()
    r.collector.close()
    r.collector.close()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


def test_a_failing_event_wait_is_reported_and_backed_off(rig):
    r = rig(scenario_toml("l4"), events=True)
    driver = r.sim.driver
    original = driver.nvmlEventSetWait_v2
    driver.nvmlEventSetWait_v2 = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint
    )(lambda *_: pynvml.NVML_ERROR_UNKNOWN)
    pynvml._nvmlGetFunctionPointer_cache.clear()
    try:
        [error] = r.wait_for_event("nvml_error")
    finally:
        driver.nvmlEventSetWait_v2 = original
        pynvml._nvmlGetFunctionPointer_cache.clear()
    assert (error.entity, error.detail["query"]) == ("nvml", "events")
    assert "Unknown" in error.detail["error"]
    assert r.collector.events.errors <= 2  # one failure, then a pause instead of a busy loop


def test_nvml_that_cannot_list_gpus_is_unavailable_not_a_crash(rig):
    def broken(sim):
        sim.driver.nvmlDeviceGetCount_v2 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(
            lambda _out: pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH
        )

    with pytest.raises(CollectorUnavailable, match="cannot list the GPUs"):
        rig(scenario_toml("l4"), before_start=broken)
