"""The simulated driver answers plain pynvml calls the way real parts do."""

from __future__ import annotations

import ctypes
import time

import pynvml
import pytest

from collectors.sim import SimulatedNvml, install, load_scenario
from collectors.sim.devices import MODELS
from collectors.sim.scenario import parse_scenario


def test_calls_before_init_are_uninitialized(simulate):
    simulate("healthy", init=False)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetPowerUsage(handle)


def test_install_swaps_library_and_uninstall_restores(clock):
    before = pynvml.nvmlLib
    with install("healthy", clock=clock) as sim:
        assert pynvml.nvmlLib is sim.driver
        pynvml.nvmlInit()
        assert pynvml.nvmlDeviceGetCount() == 8
        pynvml.nvmlShutdown()
    assert pynvml.nvmlLib is before
    assert "nvmlDeviceGetCount_v2" not in pynvml._nvmlGetFunctionPointer_cache


def test_system_queries_report_the_scenario_driver(simulate):
    simulate("healthy")
    assert pynvml.nvmlSystemGetDriverVersion() == "550.127.05"
    assert pynvml.nvmlSystemGetNVMLVersion() == "12.550.127.05"
    assert pynvml.nvmlSystemGetCudaDriverVersion_v2() == 12040
    assert str(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)) == "GPU is lost"


def test_identity_of_h100(simulate):
    simulate("healthy")
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
    assert len(set(uuids)) == 8 and all(u.startswith("GPU-") for u in uuids)
    h = pynvml.nvmlDeviceGetHandleByUUID(uuids[5])
    assert pynvml.nvmlDeviceGetIndex(h) == 5
    assert pynvml.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
    pci = pynvml.nvmlDeviceGetPciInfo_v3(h)
    assert pci.pciDeviceId == 0x233010DE and pci.busId.startswith("00000000:")
    assert pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h) == 5
    assert pynvml.nvmlDeviceGetMaxPcieLinkWidth(h) == 16
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(8)


def test_values_in_range_and_units(simulate, clock):
    simulate("healthy")
    clock.advance(10)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    util = pynvml.nvmlDeviceGetUtilizationRates(h)
    assert 90 <= util.gpu <= 100 and 0 < util.memory < 100
    power_mw = pynvml.nvmlDeviceGetPowerUsage(h)
    assert 300_000 < power_mw <= pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == 700_000
    assert 40 <= pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) <= 85
    assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == 1980
    assert pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM) == 2619
    assert pynvml.nvmlDeviceGetPerformanceState(h) == 0
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(h) == 0
    mem = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert mem.total == 81559 << 20
    assert mem.used + mem.free + mem.reserved == mem.total
    assert 60 << 30 < mem.used < 64 << 30
    legacy = pynvml.nvmlDeviceGetMemoryInfo(h)
    assert legacy.used == mem.used + mem.reserved and legacy.free == mem.free
    # ~10 s at ~530 W is ~5.3 kJ
    assert 4_000_000 < pynvml.nvmlDeviceGetTotalEnergyConsumption(h) < 7_000_000


def test_struct_version_mismatch_is_reported(simulate):
    simulate("healthy")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetMemoryInfo(h, version=0x01000028)
    support = pynvml.c_nvmlGpmSupport_t()
    support.version = 7
    fn = pynvml._nvmlGetFunctionPointer("nvmlGpmQueryDeviceSupport")
    assert fn(h, ctypes.byref(support)) == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH


def test_missing_symbol_raises_function_not_found(simulate):
    scenario = load_scenario("t4-legacy-driver")
    simulate(scenario)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    for call in (
        lambda: pynvml.nvmlDeviceGetComputeRunningProcesses_v3(h),
        lambda: pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2),
        lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(h),
        pynvml.nvmlGpmSampleAlloc,
    ):
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            call()
    # pynvml's unversioned alias reports the mismatch as a real old driver makes it do
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    # what an agent falls back to on this driver still works
    assert len(pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h)) == 1
    assert pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h) == 0
    assert pynvml.nvmlDeviceGetMemoryInfo(h).total == 15360 << 20


def test_function_pointer_cache_is_cleared_between_installs(simulate):
    simulate("t4-legacy-driver")
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlGpmSampleAlloc()
    pynvml.nvmlShutdown()
    simulate("healthy")
    pynvml.nvmlGpmSampleFree(pynvml.nvmlGpmSampleAlloc())


@pytest.mark.parametrize("scenario", ["l4-inference", "consumer-card"])
def test_parts_without_nvlink_answer_not_supported(simulate, scenario):
    simulate(scenario)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetNvLinkState(h, 0)
    values = pynvml.nvmlDeviceGetFieldValues(
        h,
        [
            pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT,
            (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 0),
            pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES,
            pynvml.NVML_FI_DEV_POWER_INSTANT,
        ],
    )
    assert [v.nvmlReturn for v in values] == [pynvml.NVML_ERROR_NOT_SUPPORTED] * 2 + [
        pynvml.NVML_SUCCESS
    ] * 2
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMigMode(h)


def test_consumer_card_lacks_datacenter_features(simulate, clock):
    simulate("consumer-card")
    clock.advance(5)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetName(h) == "NVIDIA GeForce RTX 4090"
    for call in (
        lambda: pynvml.nvmlDeviceGetTotalEccErrors(h, 1, 0),
        lambda: pynvml.nvmlDeviceGetRemappedRows(h),
        lambda: pynvml.nvmlGpmSampleGet(h, pynvml.nvmlGpmSampleAlloc()),
    ):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call()
    assert pynvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 0
    assert 30 <= pynvml.nvmlDeviceGetFanSpeed(h) <= 100
    assert pynvml.nvmlDeviceGetPerformanceState(h) == 2  # GeForce runs CUDA in P2
    assert pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == 450_000
    ecc = pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL])[0]
    assert ecc.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED


def test_datacenter_parts_have_no_fan_reading(simulate):
    simulate("a100-healthy")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetFanSpeed(h)
    assert pynvml.nvmlDeviceGetName(h) == "NVIDIA A100-SXM4-40GB"
    assert pynvml.nvmlDeviceGetRemappedRows(h) == (0, 0, 0, 0)
    assert (
        pynvml.nvmlDeviceGetTotalEccErrors(
            h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
        )
        == 0
    )


def test_field_values_carry_timestamps_and_per_link_scopes(simulate, clock):
    simulate("healthy")
    clock.advance(3)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    ids = [(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, link) for link in range(18)]
    ids += [
        pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT,
        (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, 18),
        (pynvml.NVML_FI_DEV_NVLINK_GET_STATE, 17),
        9999,
    ]
    values = pynvml.nvmlDeviceGetFieldValues(h, ids)
    now_us = int(clock.now * 1e6)
    assert all(abs(v.timestamp - now_us) <= 20_000 for v in values)
    per_link = [v.value.ullVal for v in values[:18]]
    assert all(v.nvmlReturn == pynvml.NVML_SUCCESS for v in values[:18])
    # ~3 s of ~58 GB/s spread over 18 links, in KiB
    assert 140e9 / 1024 < sum(per_link) < 200e9 / 1024
    assert min(per_link) > 0.9 * max(per_link)
    assert values[18].value.uiVal == 18
    assert values[19].nvmlReturn == pynvml.NVML_ERROR_INVALID_ARGUMENT  # no link 18
    assert values[20].value.uiVal == pynvml.NVML_NVLINK_STATE_ACTIVE
    assert values[21].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert pynvml.nvmlDeviceGetNvLinkState(h, 17) == pynvml.NVML_FEATURE_ENABLED


def test_gpm_metrics_between_two_samples(simulate, clock):
    simulate("healthy")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 1
    first, second = pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()
    clock.advance(2)
    pynvml.nvmlGpmSampleGet(h, first)
    clock.advance(5)
    pynvml.nvmlGpmSampleGet(h, second)
    ids = [
        pynvml.NVML_GPM_METRIC_SM_UTIL,
        pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
        pynvml.NVML_GPM_METRIC_FP16_UTIL,
        pynvml.NVML_GPM_METRIC_FP32_UTIL,
        pynvml.NVML_GPM_METRIC_FP64_UTIL,
        pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC,
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC,
        pynvml.NVML_GPM_METRIC_NVLINK_L17_TX_PER_SEC,
        pynvml.NVML_GPM_METRIC_NVDEC_0_UTIL,
    ]
    get = pynvml.c_nvmlGpmMetricsGet_t()
    get.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    get.numMetrics = len(ids)
    get.sample1, get.sample2 = first, second
    for i, metric_id in enumerate(ids):
        get.metrics[i].metricId = metric_id
    pynvml.nvmlGpmMetricsGet(get)
    value = {get.metrics[i].metricId: get.metrics[i].value for i in range(len(ids))}
    assert 70 < value[pynvml.NVML_GPM_METRIC_SM_UTIL] < 90
    assert 30 < value[pynvml.NVML_GPM_METRIC_SM_OCCUPANCY] < 50
    assert 45 < value[pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL] < 65
    assert value[pynvml.NVML_GPM_METRIC_FP64_UTIL] == 0
    assert 900 < value[pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC] < 1400  # MiB/s
    assert 50_000 < value[pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC] < 60_000
    assert 2_500 < value[pynvml.NVML_GPM_METRIC_NVLINK_L17_TX_PER_SEC] < 3_500
    assert get.metrics[0].metricInfo.unit == b"%"
    assert get.metrics[len(ids) - 1].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    get.sample1, get.sample2 = second, first
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpmMetricsGet(get)
    pynvml.nvmlGpmSampleFree(first)
    pynvml.nvmlGpmSampleFree(second)


def test_a100_has_no_gpm(simulate):
    simulate("a100-healthy")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlGpmSampleGet(h, pynvml.nvmlGpmSampleAlloc())
    count = pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT])[0]
    assert count.value.uiVal == 12


def test_processes_report_job_pids(simulate, clock):
    pids = [1000] + [1001 + i for i in range(8)]  # launcher + one worker per GPU
    simulate("healthy", job_pids=lambda: pids)
    for i in range(8):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        (proc,) = pynvml.nvmlDeviceGetComputeRunningProcesses_v3(h)
        assert proc.pid == 1001 + i
        assert 60 << 30 < proc.usedGpuMemory < 64 << 30
        assert pynvml.nvmlDeviceGetGraphicsRunningProcesses_v3(h) == []


def test_single_process_job_appears_on_every_gpu(simulate):
    simulate("healthy", job_pids=lambda: [4242])
    pids = {
        pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))[0].pid
        for i in range(8)
    }
    assert pids == {4242}


def test_process_utilization_honours_last_seen(simulate, clock):
    simulate("healthy", job_pids=lambda: [7])
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetProcessUtilization(h, 0)  # no completed sample period yet
    clock.advance(5.5)
    samples = pynvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert len(samples) == 5 and {s.pid for s in samples} == {7}
    assert all(85 <= s.smUtil <= 100 for s in samples)
    newest = max(s.timeStamp for s in samples)
    assert newest <= clock.now * 1e6
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetProcessUtilization(h, newest)
    clock.advance(2)
    fresh = pynvml.nvmlDeviceGetProcessUtilization(h, newest)
    assert len(fresh) == 2 and all(s.timeStamp > newest for s in fresh)


def test_process_utilization_reports_insufficient_size_with_count(simulate, clock):
    simulate("healthy", job_pids=lambda: [7])
    clock.advance(3.5)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetProcessUtilization")
    count = ctypes.c_uint(1)
    small = (pynvml.c_nvmlProcessUtilizationSample_t * 1)()
    assert (
        fn(h, small, ctypes.byref(count), ctypes.c_ulonglong(0))
        == pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    )
    assert count.value == 3


def test_mig_devices(simulate, clock):
    simulate("h100-mig", job_pids=lambda: list(range(500, 508)))
    clock.advance(3)
    parent = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetMigMode(parent) == [1, 1]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
    migs = [pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, i) for i in range(4)]
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 4)
    assert pynvml.nvmlDeviceIsMigDeviceHandle(migs[0]).value == 1
    assert pynvml.nvmlDeviceIsMigDeviceHandle(parent).value == 0
    back = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migs[2])
    assert pynvml.nvmlDeviceGetUUID(back) == pynvml.nvmlDeviceGetUUID(parent)
    assert pynvml.nvmlDeviceGetUUID(migs[0]).startswith("MIG-")
    assert pynvml.nvmlDeviceGetName(migs[0]).endswith("MIG 3g.40gb")
    mem = pynvml.nvmlDeviceGetMemoryInfo(migs[0])
    assert mem.total == 40320 << 20 and 0 < mem.used < mem.total
    for handle in (migs[0], parent):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlDeviceGetUtilizationRates(handle)
    (proc,) = pynvml.nvmlDeviceGetComputeRunningProcesses(migs[3])
    assert (proc.pid, proc.gpuInstanceId) == (507, 4)
    assert len(pynvml.nvmlDeviceGetComputeRunningProcesses(parent)) == 4
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(parent)
    assert pynvml.nvmlDeviceGetPowerUsage(parent) > 0


def test_gpu_lost_mid_run_leaves_the_others_working(simulate, clock):
    simulate("gpu-lost")
    lost = pynvml.nvmlDeviceGetHandleByIndex(3)
    other = pynvml.nvmlDeviceGetHandleByIndex(4)
    clock.advance(24.9)
    assert pynvml.nvmlDeviceGetUtilizationRates(lost).gpu > 90
    clock.advance(0.2)
    for call in (
        pynvml.nvmlDeviceGetUtilizationRates,
        pynvml.nvmlDeviceGetPowerUsage,
        pynvml.nvmlDeviceGetUUID,
        pynvml.nvmlDeviceGetComputeRunningProcesses,
    ):
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call(lost)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByIndex(3)
    assert pynvml.nvmlDeviceGetCount() == 8
    assert pynvml.nvmlDeviceGetUtilizationRates(other).gpu > 90


def test_xid_events_are_delivered_after_registration(simulate, clock):
    simulate("gpu-lost")
    event_set = pynvml.nvmlEventSetCreate()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(8)]
    for h in handles:
        supported = pynvml.nvmlDeviceGetSupportedEventTypes(h)
        assert supported & pynvml.nvmlEventTypeXidCriticalError
        pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, event_set)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait_v2(event_set, 0)
    clock.advance(30)
    data = pynvml.nvmlEventSetWait_v2(event_set, 0)
    assert data.eventType == pynvml.nvmlEventTypeXidCriticalError and data.eventData == 79
    address = ctypes.cast(data.device, ctypes.c_void_p).value
    assert address == ctypes.cast(handles[3], ctypes.c_void_p).value
    started = time.monotonic()
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait_v2(event_set, 50)
    assert 0.04 <= time.monotonic() - started < 1.0
    pynvml.nvmlEventSetFree(event_set)


def test_events_are_settled_only_once_a_waiter_took_them_and_came_back(simulate, clock):
    """What a test on a jumping clock waits for before its next tick (tests/analysis)."""
    sim = simulate("gpu-lost")  # GPU 3 falls off the bus at 25 s: XID 79
    assert sim.events_settled()  # no event set, nothing to take
    event_set = pynvml.nvmlEventSetCreate()
    for i in range(8):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, event_set)
    clock.advance(10)
    assert sim.events_settled()  # registered, but nothing due yet
    clock.advance(20)
    assert not sim.events_settled()  # due, not yet waited for
    assert pynvml.nvmlEventSetWait_v2(event_set, 0).eventData == 79
    assert not sim.events_settled()  # handed out; the waiter has not come back
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait_v2(event_set, 0)
    assert sim.events_settled()
    pynvml.nvmlEventSetFree(event_set)


def test_event_set_registration_rejects_unsupported_types(simulate):
    simulate("consumer-card")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    event_set = pynvml.nvmlEventSetCreate()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeDoubleBitEccError, event_set)
    pynvml.nvmlEventSetFree(event_set)


def test_every_model_stays_within_its_limits(simulate, clock):
    for key, scenario in {
        "h100-sxm-80gb": "healthy",
        "a100-sxm-40gb": "a100-healthy",
        "l4": "l4-inference",
        "t4": "t4-legacy-driver",
        "rtx-4090": "consumer-card",
    }.items():
        model = MODELS[key]
        sim = simulate(scenario)
        for _ in range(20):
            clock.advance(0.7)
            for g in range(sim.scenario.gpu_count):
                h = pynvml.nvmlDeviceGetHandleByIndex(g)
                assert pynvml.nvmlDeviceGetPowerUsage(h) <= model.power_limit_w * 1000
                assert (
                    pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) <= model.max_sm_clock_mhz
                )
                assert 0 <= pynvml.nvmlDeviceGetUtilizationRates(h).gpu <= 100
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                assert mem.used <= mem.total and mem.total == model.memory_total_bytes
        pynvml.nvmlShutdown()
        sim.uninstall()


def test_secondary_queries_agents_commonly_make(simulate, clock):
    simulate("checkpoint-stall")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(12)  # mid-checkpoint: ~20 GB/s device-to-host
    assert (
        pynvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_TX_BYTES) > 15_000_000
    )  # KB/s
    assert pynvml.nvmlDeviceGetCudaComputeCapability(h) == (9, 0)
    assert pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h) == [200_000, 700_000]
    assert (
        pynvml.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
        == 89
    )
    assert pynvml.nvmlDeviceGetEccMode(h) == [1, 1]
    assert pynvml.nvmlDeviceGetEncoderUtilization(h) == [0, 167_000]
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetBAR1MemoryInfo(h)  # not simulated: as absent as on an old driver


def test_event_wait_on_the_wall_clock_blocks_until_the_event():
    scenario = parse_scenario(
        '[hardware]\nmodel = "h100-sxm-80gb"\ncount = 2\n'
        "[[effects]]\ngpus = [1]\nat_s = 0.3\nxid = 13\n"
    )
    with install(scenario):  # default clock: time.time
        pynvml.nvmlInit()
        started = time.monotonic()
        events = pynvml.nvmlEventSetCreate()
        pynvml.nvmlDeviceRegisterEvents(
            pynvml.nvmlDeviceGetHandleByIndex(1), pynvml.nvmlEventTypeXidCriticalError, events
        )
        data = pynvml.nvmlEventSetWait_v2(events, 5000)
        assert data.eventData == 13
        assert 0.25 <= time.monotonic() - started < 1.5
        with pytest.raises(pynvml.NVMLError_Timeout):
            pynvml.nvmlEventSetWait_v2(events, 100)
        pynvml.nvmlEventSetFree(events)
        pynvml.nvmlShutdown()


def test_simulated_time_starts_at_install(clock):
    sim = SimulatedNvml("gpu-lost", clock=clock)
    clock.advance(100)  # constructed long before it is installed
    with sim:
        pynvml.nvmlInit()
        assert pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(3)).gpu > 90
        clock.advance(26)
        assert sim.now() == pytest.approx(26.0)
        assert sim.truth(3).lost
        pynvml.nvmlShutdown()


def test_scenario_can_remove_single_symbols(simulate):
    simulate(
        parse_scenario(
            '[hardware]\nmodel = "h100-sxm-80gb"\n'
            '[driver]\nmissing_symbols = ["nvmlDeviceGetFieldValues"]\n'
        )
    )
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_POWER_INSTANT])
    assert pynvml.nvmlDeviceGetPowerUsage(h) > 0
