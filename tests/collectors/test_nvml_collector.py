"""NvmlCollector against the simulated driver: every metric, on every device model."""

from __future__ import annotations

import pynvml
import pytest

from agent.catalog import CATALOG
from agent.catalog.gpu import CLOCK_EVENT_FLAGS
from collectors.sim.devices import MODELS
from tests.collectors.nvml_harness import (
    JOB_PIDS,
    RigFactory,
    count_calls,
    scenario_toml,
    series,
    values,
)

GIB = 1 << 30


@pytest.fixture
def rig():
    factory = RigFactory()
    yield factory
    factory.close()


def bound(collector, entity: str) -> dict[str, str]:
    """Query name → the NVML function that answered the probe, for one device."""
    devices = {d.entity: d for d in collector.devices}
    devices.update({c.entity: c for d in collector.devices for c in d.children})
    return {q.name: q.function for q in devices[entity].queries}


def notices(rig_, entity: str | None = None) -> list[str]:
    return [e.detail["query"] for e in rig_.events("notice") if entity in (None, e.entity)]


def test_h100_records_every_metric_as_the_driver_reports_it(rig):
    r = rig(scenario_toml("h100-sxm-80gb", 2))
    r.tick()
    batch = r.tick()
    v = values(batch)
    truth = r.sim.truth(0)
    model = MODELS["h100-sxm-80gb"]
    assert batch.source == "nvml"
    assert v["gpu0", "gpu.utilization"] == truth.util_gpu / 100
    assert v["gpu0", "gpu.memory.utilization"] == truth.util_memory / 100
    assert v["gpu0", "gpu.memory.used"] == truth.memory_used == pytest.approx(10 * GIB, rel=0.01)
    assert v["gpu0", "gpu.memory.total"] == model.memory_total_bytes
    assert v["gpu0", "gpu.memory.free"] == (
        model.memory_total_bytes - model.memory_reserved_bytes - truth.memory_used
    )
    assert v["gpu0", "gpu.temperature"] == truth.temperature_c
    assert v["gpu0", "gpu.power"] == truth.power_avg_mw / 1000
    assert v["gpu0", "gpu.power.instant"] == truth.power_inst_mw / 1000
    assert v["gpu0", "gpu.power.limit"] == model.power_limit_w
    assert v["gpu0", "gpu.energy"] == truth.energy_mj / 1000
    assert v["gpu0", "gpu.clock.sm"] == truth.sm_clock_mhz
    assert v["gpu0", "gpu.clock.sm.max"] == model.max_sm_clock_mhz
    assert v["gpu0", "gpu.clock.memory"] == truth.mem_clock_mhz
    assert v["gpu0", "gpu.clock.memory.max"] == model.mem_clock_mhz
    assert v["gpu0", "gpu.pstate"] == truth.pstate
    assert v["gpu0", "gpu.clock_events"] == truth.reasons
    assert v["gpu0", "gpu.pcie.tx_bytes"] == truth.pcie_tx_bytes
    assert v["gpu0", "gpu.pcie.rx_bytes"] == truth.pcie_rx_bytes
    assert v["gpu0", "gpu.pcie.link.gen"] == v["gpu0", "gpu.pcie.link.gen.max"] == model.pcie_gen
    assert v["gpu0", "gpu.pcie.link.width"] == v["gpu0", "gpu.pcie.link.width.max"] == 16
    assert v["gpu0", "gpu.pcie.replays"] == truth.pcie_replays
    assert v["gpu0", "gpu.ecc.volatile.uncorrected"] == truth.dbe_volatile == 0
    assert v["gpu0", "gpu.remapped_rows.pending"] == 0
    assert v["gpu0", "gpu.xid"] == 0
    # Every value is a catalog metric of the nvml source; nothing is recorded twice.
    keys = list(zip(batch.entities, batch.metrics))
    assert len(keys) == len(set(keys))
    assert {CATALOG[m].source for m in batch.metrics} == {"nvml"}


def test_clock_event_reasons_are_recorded_as_bitmask_and_flags(rig):
    r = rig(
        scenario_toml(
            "h100-sxm-80gb",
            extra="""
[[effects]]
label = "hot"
start_s = 0
throttle = ["hw_thermal_slowdown", "sw_power_cap"]
""",
        )
    )
    v = values(r.tick())
    mask = v["gpu0", "gpu.clock_events"]
    assert (
        int(mask) & CLOCK_EVENT_FLAGS["hw_thermal"]
        and int(mask) & CLOCK_EVENT_FLAGS["sw_power_cap"]
    )
    flags = {f: v["gpu0", f"gpu.clock_event.{f}"] for f in CLOCK_EVENT_FLAGS}
    assert flags["hw_thermal"] == flags["sw_power_cap"] == 1
    assert flags["sync_boost"] == flags["gpu_idle"] == 0
    assert sum(flags.values()) == bin(int(mask)).count("1")


def test_pcie_and_nvlink_rates_come_from_the_byte_counters(rig):
    r = rig(scenario_toml("h100-sxm-80gb"))
    first = values(r.tick())
    assert ("gpu0", "gpu.pcie.tx_throughput") not in first  # a rate needs two readings
    v = values(r.tick(2.0))
    assert v["gpu0", "gpu.pcie.tx_throughput"] == pytest.approx(2e9, rel=0.01)
    assert v["gpu0", "gpu.pcie.rx_throughput"] == pytest.approx(3e9, rel=0.01)
    links = [f"gpu0/nvlink{i}" for i in range(18)]
    assert v["gpu0", "gpu.nvlink.active_links"] == 18
    per_link_tx = [v[link, "gpu.nvlink.tx_throughput"] for link in links]
    assert all(rate > 0 for rate in per_link_tx)
    # NVLink traffic only flows while kernels run: 40 GB/s x 90% busy, summed over the links.
    assert v["gpu0", "gpu.nvlink.tx_throughput"] == pytest.approx(sum(per_link_tx))
    assert v["gpu0", "gpu.nvlink.tx_throughput"] == pytest.approx(36e9, rel=0.01)
    assert v["gpu0", "gpu.nvlink.rx_throughput"] == pytest.approx(27e9, rel=0.01)
    truth = r.sim.truth(0)
    assert v["gpu0/nvlink3", "gpu.nvlink.tx_bytes"] == truth.nvlink_tx_bytes[3] // 1024 * 1024
    assert v["gpu0", "gpu.nvlink.tx_bytes"] == sum(v[link, "gpu.nvlink.tx_bytes"] for link in links)


def test_gpm_metrics_are_computed_between_consecutive_samples_on_hopper(rig):
    r = rig(scenario_toml("h100-sxm-80gb"))
    assert "gpu.sm.activity" not in r.tick().metrics  # first sample: no interval yet
    v = values(r.tick())
    assert v["gpu0", "gpu.sm.activity"] == pytest.approx(0.72, abs=0.01)  # 0.8 x 90% busy
    assert v["gpu0", "gpu.sm.occupancy"] == pytest.approx(0.36, abs=0.01)
    assert v["gpu0", "gpu.tensor.activity"] == pytest.approx(0.45, abs=0.01)
    assert v["gpu0", "gpu.dram.activity"] == pytest.approx(0.36, abs=0.01)
    assert v["gpu0", "gpu.fp16.activity"] == pytest.approx(0.27, abs=0.01)
    assert v["gpu0", "gpu.fp32.activity"] == pytest.approx(0.09, abs=0.01)
    assert v["gpu0", "gpu.fp64.activity"] == pytest.approx(0.0, abs=0.01)
    assert v["gpu0", "gpu.gpm.pcie.tx_throughput"] == pytest.approx(2e9, rel=0.01)
    assert v["gpu0", "gpu.gpm.nvlink.tx_throughput"] == pytest.approx(36e9, rel=0.01)
    assert "gpm" not in notices(r)


def test_a100_has_twelve_links_and_notes_once_that_gpm_is_unsupported(rig):
    r = rig("a100-healthy")
    r.run(3)
    v = values(r.batches[-1])
    assert v["gpu0", "gpu.nvlink.active_links"] == 12
    assert ("gpu0/nvlink11", "gpu.nvlink.rx_bytes") in v and (
        "gpu0/nvlink12",
        "gpu.nvlink.rx_bytes",
    ) not in v
    assert not any(m == "gpu.sm.activity" for b in r.batches for m in b.metrics)
    assert notices(r, "gpu0").count("gpm") == 1
    assert "gpm" not in bound(r.collector, "gpu0")
    assert all(not b.events for b in r.batches[1:])  # notices come once, in the first batch


@pytest.mark.parametrize("scenario", ["l4-inference", "t4-legacy-driver"])
def test_pcie_only_parts_record_pcie_and_no_nvlink(rig, scenario):
    r = rig(scenario)
    r.run(2)
    v = values(r.batches[-1])
    assert v["gpu0", "gpu.pcie.rx_throughput"] > 0
    assert not any("nvlink" in e or "nvlink" in m for e, m in v)
    assert notices(r, "gpu0").count("nvlink") == 1


def test_consumer_card_records_fan_and_notes_missing_ecc_once(rig):
    r = rig("consumer-card")
    r.run(3)
    v = values(r.batches[-1])
    assert 0.3 <= v["gpu0", "gpu.fan.speed"] <= 1.0
    assert v["gpu0", "gpu.pstate"] == MODELS["rtx-4090"].pstate_busy
    assert ("gpu0", "gpu.ecc.volatile.corrected") not in v
    assert ("gpu0", "gpu.remapped_rows.pending") not in v
    assert sorted(notices(r)) == ["ecc", "gpm", "nvlink", "remapped rows"]
    assert {"ecc", "remapped rows", "gpm"}.isdisjoint(bound(r.collector, "gpu0"))


def test_an_unsupported_query_is_asked_once_at_start_and_never_per_tick(rig):
    calls = {}

    def count(sim):
        calls["fan"] = count_calls(sim, "nvmlDeviceGetFanSpeed")
        calls["temperature"] = count_calls(sim, "nvmlDeviceGetTemperature")

    r = rig(scenario_toml("h100-sxm-80gb", 2), before_start=count)
    r.run(5)
    assert calls["fan"] == [2]  # the probe, once per GPU
    assert calls["temperature"] == [2 + 2 * 5]  # the probe, then every tick
    assert "fan speed" not in bound(r.collector, "gpu0")
    assert [e.detail["reason"] for e in r.events("notice")] == ["not supported"] * 2


def test_legacy_driver_falls_back_to_older_functions(rig):
    r = rig("t4-legacy-driver", job=JOB_PIDS[:1])
    r.run(2)
    functions = bound(r.collector, "gpu0")
    assert functions["memory"] == "nvmlDeviceGetMemoryInfo"
    assert functions["clock events"] == "nvmlDeviceGetCurrentClocksThrottleReasons"
    assert functions["compute processes"] == "nvmlDeviceGetComputeRunningProcesses_v2"
    v = values(r.batches[-1])
    assert v["gpu0", "gpu.memory.used"] > 0 and ("gpu0", "gpu.clock_events") in v
    assert v["gpu0", "gpu.job.processes"] == 1
    gpm = [e for e in r.events("notice") if e.detail["query"] == "gpm"]
    assert "Function Not Found" in gpm[0].detail["reason"]


def test_a_missing_symbol_drops_only_its_query_with_one_notice(rig):
    r = rig(
        scenario_toml(
            "h100-sxm-80gb",
            extra="""
[driver]
missing_symbols = ["nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPerformanceState"]
missing_fields = ["NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]
""",
        )
    )
    r.run(3)
    v = values(r.batches[-1])
    assert ("gpu0", "gpu.energy") not in v and ("gpu0", "gpu.pstate") not in v
    assert ("gpu0", "gpu.power") in v
    dropped = {e.detail["query"]: e.detail["reason"] for e in r.events("notice")}
    assert dropped["energy"] == dropped["pstate"] == "function not found (driver too old)"


def test_readings_offered_as_fields_take_no_call_of_their_own(rig):
    calls = {}

    def count(sim):
        for symbol in (
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetTotalEnergyConsumption",
            "nvmlDeviceGetPcieReplayCounter",
            "nvmlDeviceGetTotalEccErrors",
            "nvmlDeviceGetRemappedRows",
            "nvmlDeviceGetFieldValues",
        ):
            calls[symbol] = count_calls(sim, symbol)

    r = rig(scenario_toml("h100-sxm-80gb", 2), before_start=count)
    probe = {symbol: n[0] for symbol, n in calls.items()}
    r.run(5)
    per_tick = {symbol: (n[0] - probe[symbol]) / 5 for symbol, n in calls.items()}
    assert per_tick.pop("nvmlDeviceGetFieldValues") == 2  # one request per GPU and tick
    assert set(per_tick.values()) == {0}
    covered = {"power", "energy", "pcie replays", "ecc", "remapped rows"}
    assert covered.isdisjoint(bound(r.collector, "gpu0"))
    v = values(r.batches[-1])
    assert_same_as_direct_calls(v)


def test_a_driver_without_the_newer_fields_falls_back_to_the_direct_calls(rig):
    fields = [
        "NVML_FI_DEV_POWER_AVERAGE",
        "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "NVML_FI_DEV_PCIE_REPLAY_COUNTER",
        "NVML_FI_DEV_ECC_SBE_VOL_TOTAL",
        "NVML_FI_DEV_REMAPPED_PENDING",
    ]
    r = rig(scenario_toml("h100-sxm-80gb", extra=f"[driver]\nmissing_fields = {fields!r}\n"))
    r.run(3)
    functions = bound(r.collector, "gpu0")
    assert functions["power"] == "nvmlDeviceGetPowerUsage"
    assert functions["energy"] == "nvmlDeviceGetTotalEnergyConsumption"
    assert functions["pcie replays"] == "nvmlDeviceGetPcieReplayCounter"
    assert functions["ecc"] == "nvmlDeviceGetTotalEccErrors"
    assert functions["remapped rows"] == "nvmlDeviceGetRemappedRows"
    assert not [e for e in r.events("notice") if e.detail["query"] in ("power", "ecc")]
    assert_same_as_direct_calls(values(r.batches[-1]))


def assert_same_as_direct_calls(v: dict) -> None:
    """The readings of gpu0 equal what the direct NVML calls answer at the same instant."""
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert v["gpu0", "gpu.power"] == pynvml.nvmlDeviceGetPowerUsage(h) * 0.001
    assert v["gpu0", "gpu.energy"] == pynvml.nvmlDeviceGetTotalEnergyConsumption(h) * 0.001
    assert v["gpu0", "gpu.pcie.replays"] == pynvml.nvmlDeviceGetPcieReplayCounter(h)
    for metric, error, counter in (
        ("gpu.ecc.volatile.corrected", 0, pynvml.NVML_VOLATILE_ECC),
        ("gpu.ecc.volatile.uncorrected", 1, pynvml.NVML_VOLATILE_ECC),
        ("gpu.ecc.aggregate.corrected", 0, pynvml.NVML_AGGREGATE_ECC),
        ("gpu.ecc.aggregate.uncorrected", 1, pynvml.NVML_AGGREGATE_ECC),
    ):
        assert v["gpu0", metric] == pynvml.nvmlDeviceGetTotalEccErrors(h, error, counter)
    cor, unc, pending, failure = pynvml.nvmlDeviceGetRemappedRows(h)
    assert v["gpu0", "gpu.remapped_rows.correctable"] == cor
    assert v["gpu0", "gpu.remapped_rows.uncorrectable"] == unc
    assert v["gpu0", "gpu.remapped_rows.pending"] == (1 if pending else 0)
    assert v["gpu0", "gpu.remapped_rows.failure"] == (1 if failure else 0)


def test_job_processes_are_matched_per_gpu(rig):
    r = rig(scenario_toml("h100-sxm-80gb", 2, extra="[job]\nprocesses_per_gpu = 2"))
    r.tick()
    batch = r.tick()
    v = values(batch)
    on_gpu0 = [pid for pid in JOB_PIDS if (f"gpu0/pid{pid}", "gpu.process.memory") in v]
    assert len(on_gpu0) == 2
    assert v["gpu0", "gpu.job.processes"] == 2
    assert v["gpu0", "gpu.job.memory"] == sum(
        v[f"gpu0/pid{p}", "gpu.process.memory"] for p in on_gpu0
    )
    attrs = {**r.batches[0].entity_attrs, **batch.entity_attrs}
    assert attrs["gpu0"]["used_by_job"] is True
    assert attrs[f"gpu0/pid{on_gpu0[0]}"] == {"pid": on_gpu0[0], "gpu": "gpu0", "job": True}
    assert {"name", "uuid", "pci_bus_id", "memory_total", "mig"} <= set(attrs["gpu0"])
    assert attrs["gpu0"]["name"] == "NVIDIA H100 80GB HBM3"
    util = v[f"gpu0/pid{on_gpu0[0]}", "gpu.process.sm_utilization"]
    assert 0 < util <= 1


def test_gpus_used_by_other_processes_are_recorded_but_not_marked(rig):
    r = rig(scenario_toml("l4", 2), job=[777], gpu_pids=[9001, 9002])
    batch = r.tick()
    v = values(batch)
    assert v["gpu0", "gpu.job.processes"] == 0 and v["gpu0", "gpu.job.memory"] == 0
    assert v["gpu0/pid9001", "gpu.process.memory"] > 0
    assert batch.entity_attrs["gpu0"]["used_by_job"] is False
    assert batch.entity_attrs["gpu0/pid9001"]["job"] is False


def test_used_by_job_is_sent_when_the_job_starts_using_a_gpu_and_stays(rig):
    job: set[int] = set()
    r = rig(scenario_toml("l4"), job=[], gpu_pids=[4101])
    r.collector.job_pids = lambda: frozenset(job)
    assert r.tick().entity_attrs["gpu0"]["used_by_job"] is False
    assert "gpu0" not in r.tick().entity_attrs  # unchanged: not sent again
    job.add(4101)  # e.g. the launcher's child that opened the GPU was just discovered
    assert r.tick().entity_attrs["gpu0"]["used_by_job"] is True
    job.clear()  # the job exited: the GPU still belongs to this run's job
    last = r.tick()
    assert "gpu0" not in last.entity_attrs
    assert values(last)["gpu0", "gpu.job.processes"] == 0


def test_process_utilization_asks_only_for_samples_since_the_last_seen(rig):
    r = rig(scenario_toml("l4"))
    r.tick()
    reader = r.collector.devices[0].processes
    seen = reader.last_seen_us
    assert seen > 0
    quiet = r.tick(0.05)  # the driver has no new utilization sample yet
    assert not any(m == "gpu.process.sm_utilization" for m in quiet.metrics)
    assert not quiet.events and reader.last_seen_us == seen
    assert any(m == "gpu.process.sm_utilization" for m in r.tick(2.0).metrics)
    assert reader.last_seen_us > seen


def test_mig_devices_report_memory_and_processes_but_not_utilization(rig):
    r = rig("h100-mig")
    r.run(3)
    v = values(r.batches[-1])
    attrs = r.batches[0].entity_attrs
    migs = [f"gpu0/mig{i}" for i in range(4)]
    assert attrs["gpu0"]["mig"] is True
    assert attrs["gpu0/mig0"]["parent"] == "gpu0" and "3g.40gb" in attrs["gpu0/mig0"]["name"]
    assert v["gpu0/mig0", "gpu.memory.total"] == 40320 << 20
    assert v["gpu0/mig2", "gpu.memory.total"] == 9984 << 20
    assert all(v[m, "gpu.job.processes"] == 1 for m in migs)
    assert all(attrs[m]["used_by_job"] is True for m in migs)
    assert not any(e.startswith("gpu0/mig") and m == "gpu.utilization" for e, m in v)
    per_mig = [e.entity for e in r.events("notice") if e.detail["query"] == "utilization"]
    assert sorted(per_mig) == sorted(
        ["gpu0", "gpu1", *migs, *[m.replace("gpu0", "gpu1") for m in migs]]
    )
    assert not r.events("nvml_error")


def test_every_nvml_catalog_metric_is_recorded_by_some_device_model(rig):
    recorded: set[str] = set()
    for scenario in ("healthy", "consumer-card", "h100-mig"):
        r = rig(scenario)
        for batch in r.run(2):
            recorded.update(batch.metrics)
    assert {m.name for m in CATALOG.by_source("nvml")} - recorded == set()


def test_series_stay_monotonic_for_counters_over_a_run(rig):
    r = rig("healthy")
    r.run(5)
    for metric in ("gpu.energy", "gpu.pcie.tx_bytes", "gpu.nvlink.rx_bytes"):
        s = series(r.batches, "gpu3", metric)
        assert len(s) == 5 and all(b > a for a, b in zip(s, s[1:])), metric


def test_a_tick_right_after_the_last_skips_gpm_without_an_error(rig):
    r = rig(scenario_toml("h100-sxm-80gb"))
    r.run(2)
    quick = r.tick(0.001)  # e.g. the final sample when a run ends
    assert "gpu.sm.activity" not in quick.metrics and not quick.events
    assert values(r.tick())["gpu0", "gpu.sm.activity"] == pytest.approx(0.72, abs=0.01)


def test_a_driver_without_field_values_loses_only_the_counters(rig):
    r = rig(
        scenario_toml(
            "h100-sxm-80gb",
            extra="""
[driver]
missing_symbols = ["nvmlDeviceGetFieldValues"]
""",
        )
    )
    r.run(3)
    v = values(r.batches[-1])
    from_fields = {
        "gpu.pcie.tx_bytes",
        "gpu.pcie.rx_throughput",
        "gpu.nvlink.tx_bytes",
        "gpu.nvlink.active_links",
        "gpu.power.instant",
    }
    assert from_fields.isdisjoint(m for _, m in v)
    assert {"gpu.power", "gpu.sm.activity", "gpu.gpm.nvlink.tx_throughput"} <= {m for _, m in v}
    [notice] = [e for e in r.events("notice") if e.detail["query"] == "field values"]
    assert "Function Not Found" in notice.detail["reason"]
