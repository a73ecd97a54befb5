"""Named scenarios load, describe themselves, and show their signature within a minute."""

from __future__ import annotations

import dataclasses
import json
import statistics

import pynvml
import pytest

from collectors.sim import ScenarioError, install, list_scenarios, load_scenario
from collectors.sim.scenario import parse_scenario

NAMED = {
    "healthy",
    "input-bound",
    "throttled-thermal",
    "power-capped",
    "comm-bound",
    "memory-pressure",
    "straggler",
    "hang",
    "gpu-lost",
    "xid-error",
    "checkpoint-stall",
    "a100-healthy",
    "l4-inference",
    "t4-legacy-driver",
    "consumer-card",
    "h100-mig",
}
#: Simulated TPU VMs (collectors/sim/tpu), tested in tests/collectors/tpu.
#: GPUs plus simulated fabric ports / job mounts (collectors/sim/fabric_storage).
FABRIC_STORAGE_NAMED = {
    "ib-port-degrading",
    "roce-congestion",
    "nfs-latency-starving",
    "lustre-read-starving",
    "checkpoint-lustre",
    "fabric-storage-healthy",
    "comm-bound-ethernet",
}
TPU_NAMED = {
    "tpu-v5e-8-healthy",
    "tpu-v5e-8-input-bound",
    "tpu-v5p-8-memory-pressure",
    "tpu-v6e-runtime-late",
    "tpu-runtime-lost",
    "tpu-v3-8-healthy",
    "tpu-7x-multislice-dcn-bound",
    "tpu-7x-multislice-overlapped",
    "tpu-v5e-8-transfer-bound",
    "tpu-v5e-8-hang",
}


def _util_series(clock, gpus, seconds, step=0.5, start=0.0):
    clock.advance(start)
    handles = [pynvml.nvmlDeviceGetHandleByIndex(g) for g in gpus]
    series = {g: [] for g in gpus}
    for _ in range(int(seconds / step)):
        clock.advance(step)
        for g, h in zip(gpus, handles):
            series[g].append(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
    return series


def _gpm(clock, h, seconds, *metric_ids):
    first, second = pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()
    pynvml.nvmlGpmSampleGet(h, first)
    clock.advance(seconds)
    pynvml.nvmlGpmSampleGet(h, second)
    get = pynvml.c_nvmlGpmMetricsGet_t()
    get.version, get.numMetrics = pynvml.NVML_GPM_METRICS_GET_VERSION, len(metric_ids)
    get.sample1, get.sample2 = first, second
    for i, metric_id in enumerate(metric_ids):
        get.metrics[i].metricId = metric_id
    pynvml.nvmlGpmMetricsGet(get)
    return [get.metrics[i].value for i in range(len(metric_ids))]


def test_list_scenarios_is_json_serialisable():
    infos = list_scenarios()
    assert {i.name for i in infos} == NAMED | TPU_NAMED | FABRIC_STORAGE_NAMED
    payload = json.loads(json.dumps([dataclasses.asdict(i) for i in infos]))
    healthy = next(p for p in payload if p["name"] == "healthy")
    assert healthy["hardware"] == "8x H100 SXM 80GB" and healthy["gpu_count"] == 8
    assert healthy["path"].endswith("healthy.toml") and healthy["summary"]
    assert all(i.summary for i in infos)


@pytest.mark.parametrize("name", sorted(NAMED))
def test_every_named_scenario_runs_a_minute(simulate, clock, name):
    sim = simulate(name)
    assert sim.scenario.name == name
    for _ in range(12):
        clock.advance(5)
        for g in range(sim.scenario.gpu_count):
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(g)
                pynvml.nvmlDeviceGetMemoryInfo(h)
                pynvml.nvmlDeviceGetPowerUsage(h)
            except pynvml.NVMLError_GpuIsLost:
                assert name == "gpu-lost"


def test_hardware_variety_is_covered():
    models = {load_scenario(n).hardware.model.key for n in NAMED}
    assert models == {"h100-sxm-80gb", "a100-sxm-40gb", "l4", "t4", "rtx-4090"}
    assert load_scenario("h100-mig").hardware.mig


def test_healthy_gpus_are_busy_and_even(simulate, clock):
    simulate("healthy")
    series = _util_series(clock, range(8), 20)
    means = [statistics.mean(s) for s in series.values()]
    assert min(means) > 93 and max(means) - min(means) < 3


def test_input_bound_gpus_idle_in_bursts(simulate, clock):
    simulate("input-bound")
    (series,) = _util_series(clock, [0], 20, step=0.25, start=5).values()
    assert 45 < statistics.mean(series) < 65
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    rx_mib_s = _gpm(clock, h, 5, pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC)[0]
    assert rx_mib_s > 3_000  # batches stream in while the GPU waits


def test_straggler_is_less_busy_than_its_peers(simulate, clock):
    simulate("straggler")
    series = _util_series(clock, range(8), 30, step=0.3)
    means = {g: statistics.mean(s) for g, s in series.items()}
    peers = [m for g, m in means.items() if g != 5]
    assert means[5] < min(peers) - 20
    (sm_peer,) = _gpm(
        clock, pynvml.nvmlDeviceGetHandleByIndex(0), 4, pynvml.NVML_GPM_METRIC_SM_UTIL
    )
    assert sm_peer < 60  # peers spend part of every step waiting in all-reduce


def test_comm_bound_is_busy_but_not_computing(simulate, clock):
    simulate("comm-bound")
    clock.advance(2)
    h = pynvml.nvmlDeviceGetHandleByIndex(3)
    sm, tensor, nvlink_tx = _gpm(
        clock,
        h,
        5,
        pynvml.NVML_GPM_METRIC_SM_UTIL,
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC,
    )
    assert pynvml.nvmlDeviceGetUtilizationRates(h).gpu >= 95
    assert sm < 30 and tensor < 12
    assert nvlink_tx * (1 << 20) > 250e9


def test_hang_pins_every_gpu_with_no_activity(simulate, clock):
    simulate("hang")
    clock.advance(10)
    h = pynvml.nvmlDeviceGetHandleByIndex(7)
    (sm_before,) = _gpm(clock, h, 5, pynvml.NVML_GPM_METRIC_SM_UTIL)
    clock.advance(10)
    sm_after, nvlink = _gpm(
        clock, h, 5, pynvml.NVML_GPM_METRIC_SM_UTIL, pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC
    )
    assert sm_before > 70 and sm_after < 5 and nvlink == 0
    assert all(
        pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(g)).gpu == 100
        for g in range(8)
    )


def test_checkpoint_stall_dips_periodically(simulate, clock):
    simulate("checkpoint-stall")
    (series,) = _util_series(clock, [2], 60, step=1.0).values()
    # t = 1..60 s; dips during 10-16 s and 40-46 s (utilization lags by its 1 s window)
    assert max(series[11:15]) == 0 and max(series[41:45]) == 0
    assert min(series[20:38]) > 90
    h = pynvml.nvmlDeviceGetHandleByIndex(2)
    clock.advance(10.5)  # from 60 s into the next checkpoint (70-76 s)
    (tx,) = _gpm(clock, h, 4, pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC)
    assert tx * (1 << 20) > 15e9


def test_memory_pressure_approaches_the_ceiling(simulate, clock):
    simulate("memory-pressure")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(35)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    assert mem.free < 0.01 * mem.total


def test_xid_error_raises_ecc_counts_and_events(simulate, clock):
    simulate("xid-error")
    handles = [pynvml.nvmlDeviceGetHandleByIndex(g) for g in range(8)]
    events = pynvml.nvmlEventSetCreate()
    for h in handles:
        pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, events)
    uncorrected = (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)
    assert pynvml.nvmlDeviceGetTotalEccErrors(handles[6], *uncorrected) == 0
    clock.advance(40)
    received = []
    while True:
        try:
            data = pynvml.nvmlEventSetWait_v2(events, 0)
        except pynvml.NVMLError_Timeout:
            break
        received.append(data.eventData)
    assert received == [94, 31]
    assert pynvml.nvmlDeviceGetTotalEccErrors(handles[6], *uncorrected) == 1
    assert pynvml.nvmlDeviceGetRemappedRows(handles[6]) == (0, 1, 1, 0)
    assert pynvml.nvmlDeviceGetTotalEccErrors(handles[5], *uncorrected) == 0
    pynvml.nvmlEventSetFree(events)


def test_l4_inference_follows_request_waves(simulate, clock):
    simulate("l4-inference")
    (series,) = _util_series(clock, [0], 20, step=0.5).values()
    assert max(series) > 80 and min(series) < 55
    assert pynvml.nvmlDeviceGetEnforcedPowerLimit(pynvml.nvmlDeviceGetHandleByIndex(0)) == 72_000


USER_TOML = """
name = "my-run"
summary = "two A100s, the second one slow"
seed = 3
duration_s = 30
[hardware]
model = "a100-sxm-40gb"
count = 2
[workload]
busy = 0.95
sm_activity = 0.8
memory_used_gib = 30
[overrides.1]
busy = 0.6
"""


def test_user_written_scenario_file(simulate, clock, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(USER_TOML)
    scenario = load_scenario(str(path))
    assert scenario.info().hardware == "2x A100 SXM 40GB" and scenario.info().path == str(path)
    simulate(scenario)
    series = _util_series(clock, [0, 1], 10)
    assert statistics.mean(series[0]) > statistics.mean(series[1]) + 25


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hardware\nmodel = 1", "invalid TOML"),
        ("[workload]\nbusy = 0.5", "missing [hardware]"),
        ('[hardware]\nmodel = "h200"', "model 'h200' unknown"),
        ('[hardware]\nmodel = "l4"\ncolor = 1', "unknown key 'color'"),
        ('[hardware]\nmodel = "l4"\n[workload]\nbusy = 1.5', "busy is a fraction"),
        ('[hardware]\nmodel = "l4"\n[workload]\nspeed = 1', "unknown signal 'speed'"),
        ('[hardware]\nmodel = "l4"\nmig = ["1g.10gb"]', "does not support MIG"),
        ('[hardware]\nmodel = "h100-sxm-80gb"\nmig = ["7g.80gb", "1g.10gb"]', "uses 8 slices"),
        ('[hardware]\nmodel = "l4"\ncount = 2\n[overrides.2]\nbusy = 0.1', "GPU 2 out of range"),
        (
            '[hardware]\nmodel = "l4"\n[[effects]]\nat_s = 3\nxid = 31\nset = { busy = 0.1 }',
            "not both",
        ),
        ('[hardware]\nmodel = "l4"\n[[effects]]\nstart_s = 3\nxid = 31', "take at_s"),
        ('[hardware]\nmodel = "l4"\n[[effects]]\nevery_s = 3\nset = { busy = 0.1 }', "go together"),
        (
            '[hardware]\nmodel = "l4"\n[[effects]]\nthrottle = ["too_hot"]',
            "unknown throttle reason",
        ),
        ('[hardware]\nmodel = "l4"\n[[effects]]\nat_s = 1\nlost = true\nevery_s = 2', "lost once"),
    ],
)
def test_bad_scenarios_fail_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(str(path))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


def test_unknown_scenario_name_lists_the_known_ones():
    with pytest.raises(ScenarioError, match="unknown scenario 'helthy'.*healthy"):
        load_scenario("helthy")
    assert isinstance(ScenarioError("x"), ValueError)


def test_parse_scenario_accepts_text():
    scenario = parse_scenario('[hardware]\nmodel = "t4"', default_name="inline")
    assert scenario.name == "inline" and scenario.gpu_count == 1


def test_missing_fields_name_nvml_field_ids_and_refuse_anything_else():
    scenario = parse_scenario(
        '[hardware]\nmodel = "t4"\n[driver]\nmissing_fields = ["NVML_FI_DEV_POWER_AVERAGE"]\n'
    )
    assert scenario.missing_fields == {pynvml.NVML_FI_DEV_POWER_AVERAGE}
    for bad in ('"NVML_FI_DEV_POWR"', '"NVML_SUCCESS"', "185"):
        with pytest.raises(ScenarioError, match="is not an NVML field id name"):
            parse_scenario(f'[hardware]\nmodel = "t4"\n[driver]\nmissing_fields = [{bad}]\n')


def test_unknown_missing_symbol_is_a_scenario_error(clock):
    scenario = parse_scenario(
        '[hardware]\nmodel = "t4"\n[driver]\nmissing_symbols = ["nvmlDeviceGetPowr"]\n'
    )
    with pytest.raises(ScenarioError, match="'nvmlDeviceGetPowr' is not a simulated NVML symbol"):
        install(scenario, clock=clock)


def test_docs_list_every_named_scenario_with_its_summary():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "scenarios.md").read_text()
    for info in list_scenarios():
        assert f"| `{info.name}` | {info.hardware} | {info.summary} |" in doc, info.name
