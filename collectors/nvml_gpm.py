"""Hopper GPM (GPU Performance Monitoring): profiler-grade activity between two samples.

GPM metrics are not instantaneous readings: the driver computes them between two samples
the caller keeps. So each device holds two sample buffers and alternates them; every tick
takes a new sample and asks for the metrics between it and the previous one. NVML wants
samples at least 100 ms apart, so a tick sooner than that (the final sample at the end of a
run, very short intervals) skips GPM and keeps the older sample as the baseline.
"""

from __future__ import annotations

import contextlib
import ctypes
import struct

import pynvml

from agent.model import BatchBuilder
from collectors.nvml_probe import UNSUPPORTED, Notice, Query, query

#: (metricId, nvmlReturn, value) at the head of each ``c_nvmlGpmMetric_t`` (the rest: its info).
_METRIC = struct.Struct(
    f"=IId{ctypes.sizeof(pynvml.c_nvmlGpmMetric_t) - pynvml.c_nvmlGpmMetric_t.metricInfo.offset}x"
)
assert pynvml.c_nvmlGpmMetric_t.value.offset == 8 and _METRIC.size == ctypes.sizeof(
    pynvml.c_nvmlGpmMetric_t
)

PERCENT = 0.01
MIB = float(1 << 20)
#: NVML refreshes GPM counters internally; samples closer than this are not meaningful.
MIN_SAMPLE_INTERVAL_S = 0.1

#: Catalog metric ← (GPM metric id, scale to the catalog unit).
GPM_METRICS: dict[str, tuple[int, float]] = {
    "gpu.sm.activity": (pynvml.NVML_GPM_METRIC_SM_UTIL, PERCENT),
    "gpu.sm.occupancy": (pynvml.NVML_GPM_METRIC_SM_OCCUPANCY, PERCENT),
    "gpu.tensor.activity": (pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL, PERCENT),
    "gpu.dram.activity": (pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL, PERCENT),
    "gpu.fp16.activity": (pynvml.NVML_GPM_METRIC_FP16_UTIL, PERCENT),
    "gpu.fp32.activity": (pynvml.NVML_GPM_METRIC_FP32_UTIL, PERCENT),
    "gpu.fp64.activity": (pynvml.NVML_GPM_METRIC_FP64_UTIL, PERCENT),
    "gpu.gpm.pcie.tx_throughput": (pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC, MIB),
    "gpu.gpm.pcie.rx_throughput": (pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC, MIB),
    "gpu.gpm.nvlink.tx_throughput": (pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC, MIB),
    "gpu.gpm.nvlink.rx_throughput": (pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC, MIB),
}


class GpmReader:
    """Two alternating GPM samples of one device and a reusable metrics request."""

    def __init__(self, handle: pynvml.c_nvmlDevice_t, entity: str) -> None:
        self.handle = handle
        self.entity = entity
        self.samples: list[pynvml.c_nvmlGpmSample_t] = []
        self.current = 0
        self.sampled_at: float | None = None  # tick time of the newest sample
        self.request = pynvml.c_nvmlGpmMetricsGet_t()
        self.request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        self.outputs = [(name, scale) for name, (_, scale) in GPM_METRICS.items()]
        self.request.numMetrics = len(self.outputs)
        for i, (metric_id, _) in enumerate(GPM_METRICS.values()):
            self.request.metrics[i].metricId = metric_id
        # The results, read in one pass with ``struct``: each field through nvidia-ml-py's
        # attribute hook cost more than the two NVML calls of the tick.
        start = pynvml.c_nvmlGpmMetricsGet_t.metrics.offset
        self.results = memoryview(self.request).cast("B")[
            start : start + _METRIC.size * len(self.outputs)
        ]

    def probe(self) -> tuple[list[Query], list[Notice]]:
        """GPM answers on Hopper and newer; elsewhere say so once."""
        try:
            supported = bool(pynvml.nvmlGpmQueryDeviceSupport(self.handle).isSupportedDevice)
            reason = "not supported on this GPU (needs Hopper or newer)"
        except pynvml.NVMLError_GpuIsLost:
            raise
        except UNSUPPORTED as exc:
            supported, reason = False, f"unavailable ({exc})"
        if supported:
            try:
                self.samples = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
                pynvml.nvmlGpmSampleGet(self.handle, self.samples[0])
            except pynvml.NVMLError_GpuIsLost:
                self.close()
                raise
            except pynvml.NVMLError as exc:
                self.close()
                supported, reason = False, f"unavailable ({exc})"
        if not supported:
            return [], [
                Notice(
                    self.entity,
                    {
                        "query": "gpm",
                        "functions": ["nvmlGpmQueryDeviceSupport"],
                        "reason": reason,
                        "message": f"GPM profiling metrics (SM activity, tensor activity, DRAM bandwidth) "
                        f"are {reason} on {self.entity}",
                    },
                )
            ]
        return [query("gpm", "nvmlGpmMetricsGet", self.fetch, self.emit)], []

    def fetch(self) -> pynvml.c_nvmlGpmSample_t:
        """The buffer the next sample goes into (sampling needs the tick's time: see emit)."""
        return self.samples[self.current]

    def emit(self, b: BatchBuilder, sample: pynvml.c_nvmlGpmSample_t) -> None:
        if self.sampled_at is not None and b.ts - self.sampled_at < MIN_SAMPLE_INTERVAL_S:
            return  # too soon after the last sample: keep that one as the baseline
        pynvml.nvmlGpmSampleGet(self.handle, sample)
        previous = self.samples[1 - self.current]
        had_previous = self.sampled_at is not None
        self.sampled_at = b.ts
        self.current = 1 - self.current  # the next sample overwrites the older buffer
        if not had_previous:
            return
        request = self.request
        request.sample1, request.sample2 = previous, sample
        pynvml.nvmlGpmMetricsGet(request)
        ok = pynvml.NVML_SUCCESS
        metrics = [
            (name, value * scale)
            for (_, ret, value), (name, scale) in zip(
                _METRIC.iter_unpack(self.results), self.outputs
            )
            if ret == ok
        ]
        b.add_row(self.entity, [m for m, _ in metrics], [float(v) for _, v in metrics])

    def close(self) -> None:
        for sample in self.samples:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlGpmSampleFree(sample)
        self.samples = []
