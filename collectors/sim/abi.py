"""Plain ctypes mirrors of the NVML structs the simulated driver writes.

pynvml's own struct classes override __getattribute__/__setattr__ in Python
(for pretty printing), which makes each field access cost about a
microsecond. The driver receives struct pointers as addresses and writes
through these layout-identical mirrors instead; an import-time check keeps
the layouts in step with the installed nvidia-ml-py.
"""

from __future__ import annotations

import ctypes
from ctypes import Structure, c_char, c_double, c_int64, c_uint, c_uint32, c_ulonglong, c_void_p

import pynvml


class Memory(Structure):
    _fields_ = [("total", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class MemoryV2(Structure):
    _fields_ = [
        ("version", c_uint),
        ("total", c_ulonglong),
        ("reserved", c_ulonglong),
        ("free", c_ulonglong),
        ("used", c_ulonglong),
    ]


class Utilization(Structure):
    _fields_ = [("gpu", c_uint), ("memory", c_uint)]


class PciInfo(Structure):
    _fields_ = [
        ("busIdLegacy", c_char * pynvml.NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE),
        ("domain", c_uint),
        ("bus", c_uint),
        ("device", c_uint),
        ("pciDeviceId", c_uint),
        ("pciSubSystemId", c_uint),
        ("busId", c_char * pynvml.NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE),
    ]


class ProcessInfo(Structure):
    _fields_ = [
        ("pid", c_uint),
        ("usedGpuMemory", c_ulonglong),
        ("gpuInstanceId", c_uint),
        ("computeInstanceId", c_uint),
    ]


class ProcessUtilizationSample(Structure):
    _fields_ = [
        ("pid", c_uint),
        ("timeStamp", c_ulonglong),
        ("smUtil", c_uint),
        ("memUtil", c_uint),
        ("encUtil", c_uint),
        ("decUtil", c_uint),
    ]


class FieldValue(Structure):
    """nvmlFieldValue_t with the value union read/written as its 64-bit member."""

    _fields_ = [
        ("fieldId", c_uint32),
        ("scopeId", c_uint32),
        ("timestamp", c_int64),
        ("latencyUsec", c_int64),
        ("valueType", c_uint),
        ("nvmlReturn", c_uint),
        ("value", c_ulonglong),
    ]


class EventData(Structure):
    _fields_ = [
        ("device", c_void_p),
        ("eventType", c_ulonglong),
        ("eventData", c_ulonglong),
        ("gpuInstanceId", c_uint),
        ("computeInstanceId", c_uint),
    ]


class GpmMetric(Structure):
    _fields_ = [
        ("metricId", c_uint),
        ("nvmlReturn", c_uint),
        ("value", c_double),
        ("shortName", c_void_p),
        ("longName", c_void_p),
        ("unit", c_void_p),
    ]


class GpmMetricsGet(Structure):
    _fields_ = [
        ("version", c_uint),
        ("numMetrics", c_uint),
        ("sample1", c_void_p),
        ("sample2", c_void_p),
        ("metrics", GpmMetric * pynvml.NVML_GPM_METRIC_MAX),
    ]


class GpmSupport(Structure):
    _fields_ = [("version", c_uint), ("isSupportedDevice", c_uint)]


_MIRRORS = {
    Memory: pynvml.c_nvmlMemory_t,
    MemoryV2: pynvml.c_nvmlMemory_v2_t,
    Utilization: pynvml.c_nvmlUtilization_t,
    PciInfo: pynvml.nvmlPciInfo_t,
    ProcessInfo: pynvml.c_nvmlProcessInfo_v3_t,
    ProcessUtilizationSample: pynvml.c_nvmlProcessUtilizationSample_t,
    FieldValue: pynvml.c_nvmlFieldValue_t,
    EventData: pynvml.c_nvmlEventData_t,
    GpmMetric: pynvml.c_nvmlGpmMetric_t,
    GpmMetricsGet: pynvml.c_nvmlGpmMetricsGet_t,
    GpmSupport: pynvml.c_nvmlGpmSupport_t,
}
for _mirror, _original in _MIRRORS.items():
    if ctypes.sizeof(_mirror) != ctypes.sizeof(_original) or any(
        getattr(_mirror, name).offset != getattr(_original, name).offset
        for name, *_ in _original._fields_
        if hasattr(_mirror, name)
    ):
        raise ImportError(
            f"collectors.sim.abi: {_mirror.__name__} no longer matches pynvml.{_original.__name__}"
        )
