"""The kept-argument getters answer what nvidia-ml-py's wrappers answer, errors included."""

from __future__ import annotations

import ctypes

import pynvml
import pytest

from collectors import nvml_calls
from collectors.nvml_calls import Getter
from collectors.sim import install, load_scenario
from tests.collectors.nvml_harness import JOB_PIDS, FakeClock


@pytest.fixture
def handle():
    sim = install(load_scenario("healthy"), clock=FakeClock(), job_pids=lambda: list(JOB_PIDS))
    pynvml.nvmlInit()
    yield pynvml.nvmlDeviceGetHandleByIndex(0)
    while sim.driver._refcount:
        pynvml.nvmlShutdown()
    sim.uninstall()


def _pairs(h):
    nv = pynvml
    return [
        (
            Getter("nvmlDeviceGetTemperature", h, ctypes.c_uint(nv.NVML_TEMPERATURE_GPU)),
            lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
        ),
        (Getter("nvmlDeviceGetPowerUsage", h), lambda: nv.nvmlDeviceGetPowerUsage(h)),
        (
            Getter("nvmlDeviceGetEnforcedPowerLimit", h),
            lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h),
        ),
        (
            Getter("nvmlDeviceGetTotalEnergyConsumption", h, out=ctypes.c_uint64()),
            lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h),
        ),
        (
            Getter("nvmlDeviceGetClockInfo", h, ctypes.c_uint(nv.NVML_CLOCK_SM)),
            lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
        ),
        (
            Getter("nvmlDeviceGetClockInfo", h, ctypes.c_uint(nv.NVML_CLOCK_MEM)),
            lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
        ),
        (Getter("nvmlDeviceGetPerformanceState", h), lambda: nv.nvmlDeviceGetPerformanceState(h)),
        (
            Getter("nvmlDeviceGetCurrentClocksEventReasons", h, out=ctypes.c_ulonglong()),
            lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h),
        ),
        (
            Getter("nvmlDeviceGetCurrPcieLinkGeneration", h),
            lambda: nv.nvmlDeviceGetCurrPcieLinkGeneration(h),
        ),
        (
            Getter("nvmlDeviceGetCurrPcieLinkWidth", h),
            lambda: nv.nvmlDeviceGetCurrPcieLinkWidth(h),
        ),
        (
            Getter("nvmlDeviceGetPcieReplayCounter", h),
            lambda: nv.nvmlDeviceGetPcieReplayCounter(h),
        ),
        (
            nvml_calls.utilization(h),
            lambda: (lambda u: (u.gpu, u.memory))(nv.nvmlDeviceGetUtilizationRates(h)),
        ),
        (
            nvml_calls.memory(h, v2=True),
            lambda: (lambda m: (m.total, m.free, m.used))(
                nv.nvmlDeviceGetMemoryInfo(h, nv.nvmlMemory_v2)
            ),
        ),
        (
            nvml_calls.memory(h, v2=False),
            lambda: (lambda m: (m.total, m.free, m.used))(nv.nvmlDeviceGetMemoryInfo(h)),
        ),
    ]


def test_kept_argument_getters_answer_what_the_wrappers_answer(handle):
    for getter, wrapper in _pairs(handle):
        for _ in range(3):  # the kept result object is written again each call
            assert getter() == wrapper(), getter.function


def test_a_kept_argument_getter_raises_the_wrappers_error(handle):
    bogus = ctypes.c_void_p(12345)  # not a device handle of this driver
    for getter, wrapper in _pairs(bogus):
        with pytest.raises(pynvml.NVMLError) as expected:
            wrapper()
        with pytest.raises(type(expected.value)):
            getter()


def test_a_symbol_the_driver_lacks_is_function_not_found():
    pynvml._nvmlGetFunctionPointer_cache.pop("nvmlDeviceGetNoSuchThing", None)
    sim = install(load_scenario("healthy"), clock=FakeClock(), job_pids=lambda: list(JOB_PIDS))
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            Getter("nvmlDeviceGetNoSuchThing", h)()
    finally:
        while sim.driver._refcount:
            pynvml.nvmlShutdown()
        sim.uninstall()
