"""GPM (GPU Performance Monitoring) and the XID event API of the simulated driver.

GPM samples record the engine's activity integrals; nvmlGpmMetricsGet turns
two samples into exact averages over the interval between them. Event sets
deliver the scenario's XID events (and XID 79 when a GPU falls off the bus)
that happen after registration, honouring nvmlEventSetWait_v2's timeout.
"""

from __future__ import annotations

import ctypes
import time
from collections import deque
from collections.abc import Callable
from ctypes import POINTER, c_int, c_uint, c_ulonglong, c_void_p
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pynvml

from collectors.sim import abi
from collectors.sim.engine import CI, TICK_S

_OK = pynvml.NVML_SUCCESS
_MIB = float(1 << 20)
_WAIT_SLICE_S = 0.005


def _hand_out(out: int, registry: dict, obj) -> int:
    """Register ``obj`` under its buffer's address and write that opaque handle to ``out``."""
    addr = ctypes.addressof(obj.buffer)
    registry[addr] = obj
    c_void_p.from_address(out).value = addr
    return _OK


@dataclass(slots=True)
class _GpmSample:
    buffer: ctypes.Array[ctypes.c_char]
    gpu: int = -1
    tick: int = 0
    cum: np.ndarray | None = None


@dataclass(slots=True)
class _EventSet:
    buffer: ctypes.Array[ctypes.c_char]
    registered: dict[int, tuple[int, int]] = field(default_factory=dict)  # gpu -> (types, tick)
    seen_tick: int = 0
    queue: deque[tuple[int, int, int]] = field(default_factory=deque)
    handed_out: bool = False  # an event returned; its waiter has not come back for more yet


def _fraction(col: str) -> Callable[[np.ndarray, float, np.ndarray], float]:
    return lambda d, dt, w: 100.0 * d[CI[col]] / dt


def _rate(
    col: str, link: int | None = None
) -> Callable[[np.ndarray, float, np.ndarray], float | None]:
    def value(d: np.ndarray, dt: float, w: np.ndarray) -> float | None:
        if link is None:
            return d[CI[col]] / dt / _MIB
        if link >= len(w):
            return None
        return d[CI[col]] * w[link] / dt / _MIB

    return value


def _metric_table() -> dict[int, tuple[bytes, bytes, bytes, Callable[..., float | None]]]:
    pct = b"%"
    table: dict[int, tuple[bytes, bytes, bytes, Callable[..., float | None]]] = {
        pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: (
            b"gr_util",
            b"graphics engine utilization",
            pct,
            _fraction("busy"),
        ),
        pynvml.NVML_GPM_METRIC_SM_UTIL: (b"sm_util", b"SM activity", pct, _fraction("sm")),
        pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: (
            b"sm_occupancy",
            b"SM occupancy",
            pct,
            _fraction("occupancy"),
        ),
        pynvml.NVML_GPM_METRIC_INTEGER_UTIL: (
            b"integer_util",
            b"integer pipe utilization",
            pct,
            lambda d, dt, w: 10.0 * d[CI["sm"]] / dt,
        ),
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: (
            b"any_tensor_util",
            b"tensor pipe utilization",
            pct,
            _fraction("tensor"),
        ),
        pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL: (
            b"hmma_tensor_util",
            b"HMMA tensor utilization",
            pct,
            _fraction("tensor"),
        ),
        pynvml.NVML_GPM_METRIC_DFMA_TENSOR_UTIL: (
            b"dfma_tensor_util",
            b"DFMA tensor utilization",
            pct,
            lambda d, dt, w: 0.0,
        ),
        pynvml.NVML_GPM_METRIC_DMMA_TENSOR_UTIL: (
            b"dmma_tensor_util",
            b"DMMA tensor utilization",
            pct,
            lambda d, dt, w: 0.0,
        ),
        pynvml.NVML_GPM_METRIC_IMMA_TENSOR_UTIL: (
            b"imma_tensor_util",
            b"IMMA tensor utilization",
            pct,
            lambda d, dt, w: 0.0,
        ),
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: (
            b"dram_bw_util",
            b"DRAM bandwidth utilization",
            pct,
            _fraction("dram"),
        ),
        pynvml.NVML_GPM_METRIC_FP64_UTIL: (
            b"fp64_util",
            b"FP64 pipe utilization",
            pct,
            _fraction("fp64"),
        ),
        pynvml.NVML_GPM_METRIC_FP32_UTIL: (
            b"fp32_util",
            b"FP32 pipe utilization",
            pct,
            _fraction("fp32"),
        ),
        pynvml.NVML_GPM_METRIC_FP16_UTIL: (
            b"fp16_util",
            b"FP16 pipe utilization",
            pct,
            _fraction("fp16"),
        ),
        pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: (
            b"pcie_tx",
            b"PCIe transmit bandwidth",
            b"MiB/sec",
            _rate("pcie_tx"),
        ),
        pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: (
            b"pcie_rx",
            b"PCIe receive bandwidth",
            b"MiB/sec",
            _rate("pcie_rx"),
        ),
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: (
            b"nvlink_tx",
            b"NVLink transmit bandwidth",
            b"MiB/sec",
            _rate("nvlink_tx"),
        ),
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: (
            b"nvlink_rx",
            b"NVLink receive bandwidth",
            b"MiB/sec",
            _rate("nvlink_rx"),
        ),
    }
    for link in range(18):
        rx = pynvml.NVML_GPM_METRIC_NVLINK_L0_RX_PER_SEC + 2 * link
        table[rx] = (
            f"nvlink_l{link}_rx".encode(),
            f"NVLink link {link} receive bandwidth".encode(),
            b"MiB/sec",
            _rate("nvlink_rx", link),
        )
        table[rx + 1] = (
            f"nvlink_l{link}_tx".encode(),
            f"NVLink link {link} transmit bandwidth".encode(),
            b"MiB/sec",
            _rate("nvlink_tx", link),
        )
    return table


_METRICS = _metric_table()
# metricInfo strings live as long as the module: C code keeps the pointers.
_NAME_BUFFERS = {
    mid: tuple(ctypes.create_string_buffer(text) for text in entry[:3])
    for mid, entry in _METRICS.items()
}
_NAMES = {mid: tuple(ctypes.addressof(b) for b in bufs) for mid, bufs in _NAME_BUFFERS.items()}


class GpmEventsMixin:
    model: Any
    scenario: Any
    engine: Any
    _lock: Any

    def gpm_event_symbols(self) -> dict[str, tuple[Any, tuple[Any, ...]]]:
        self._gpm_samples: dict[int, _GpmSample] = {}
        self._event_sets: dict[int, _EventSet] = {}
        h = c_void_p
        return {
            "nvmlGpmQueryDeviceSupport": (c_int, (h, c_void_p)),
            "nvmlGpmSampleAlloc": (c_int, (c_void_p,)),
            "nvmlGpmSampleFree": (c_int, (c_void_p,)),
            "nvmlGpmSampleGet": (c_int, (h, c_void_p)),
            "nvmlGpmMetricsGet": (c_int, (c_void_p,)),
            "nvmlEventSetCreate": (c_int, (c_void_p,)),
            "nvmlEventSetFree": (c_int, (c_void_p,)),
            "nvmlDeviceRegisterEvents": (c_int, (h, c_ulonglong, c_void_p)),
            "nvmlDeviceGetSupportedEventTypes": (c_int, (h, POINTER(c_ulonglong))),
            "nvmlEventSetWait_v2": (c_int, (c_void_p, c_void_p, c_uint)),
        }

    # -- GPM ------------------------------------------------------------------------------------
    def _nvmlGpmQueryDeviceSupport(self, h: int, out: int | None) -> int:
        dev, _ = self._frame(h)  # type: ignore[attr-defined]
        if not out:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        support = abi.GpmSupport.from_address(out)
        if support.version != pynvml.NVML_GPM_SUPPORT_VERSION:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        support.isSupportedDevice = 1 if self.model.gpm and dev.mig is None else 0
        return _OK

    def _nvmlGpmSampleAlloc(self, out: int | None) -> int:
        self._require_init()  # type: ignore[attr-defined]
        if not out:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        return _hand_out(out, self._gpm_samples, _GpmSample(ctypes.create_string_buffer(32)))

    def _nvmlGpmSampleFree(self, addr: int | None) -> int:
        if self._gpm_samples.pop(addr or 0, None) is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        return _OK

    def _nvmlGpmSampleGet(self, h: int, addr: int | None) -> int:
        dev, _ = self._frame(h)  # type: ignore[attr-defined]
        sample = self._gpm_samples.get(addr or 0)
        if sample is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if not self.model.gpm or dev.mig is not None:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        with self._lock:
            tick = self.tick()  # type: ignore[attr-defined]
            sample.cum = self.engine.frame_cumulative(tick)[dev.gpu].copy()
        sample.gpu, sample.tick = dev.gpu, tick
        return _OK

    def _nvmlGpmMetricsGet(self, addr: int | None) -> int:
        self._require_init()  # type: ignore[attr-defined]
        if not addr:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        mg = abi.GpmMetricsGet.from_address(addr)
        if mg.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        s1 = self._gpm_samples.get(mg.sample1 or 0)
        s2 = self._gpm_samples.get(mg.sample2 or 0)
        if s1 is None or s2 is None or s1.cum is None or s2.cum is None or s1.gpu != s2.gpu:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if mg.numMetrics > pynvml.NVML_GPM_METRIC_MAX or s2.tick <= s1.tick:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        dt = (s2.tick - s1.tick) * TICK_S
        delta = s2.cum - s1.cum
        weights = self.engine.link_weights[s1.gpu]
        metrics = mg.metrics
        for i in range(mg.numMetrics):
            metric = metrics[i]
            entry = _METRICS.get(metric.metricId)
            value = entry[3](delta, dt, weights) if entry else None
            if entry is None or value is None:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                metric.value = 0.0
                continue
            metric.nvmlReturn = _OK
            metric.value = max(0.0, min(value, 100.0)) if entry[2] == b"%" else max(0.0, value)
            metric.shortName, metric.longName, metric.unit = _NAMES[metric.metricId]
        return _OK

    # -- events ---------------------------------------------------------------------------------
    def _nvmlEventSetCreate(self, out: int | None) -> int:
        self._require_init()  # type: ignore[attr-defined]
        if not out:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        return _hand_out(out, self._event_sets, _EventSet(ctypes.create_string_buffer(16)))

    def _nvmlEventSetFree(self, addr: int | None) -> int:
        self._require_init()  # type: ignore[attr-defined]
        if self._event_sets.pop(addr or 0, None) is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        return _OK

    def _nvmlDeviceGetSupportedEventTypes(self, h: int, out: Any) -> int:
        dev, _ = self._frame(h)  # type: ignore[attr-defined]
        out[0] = self.model.event_types if dev.mig is None else 0
        return _OK

    def _nvmlDeviceRegisterEvents(self, h: int, types: int, addr: int | None) -> int:
        dev, _ = self._gpu_frame(h)  # type: ignore[attr-defined]
        es = self._event_sets.get(addr or 0)
        if es is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if types & ~self.model.event_types:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        with self._lock:
            tick = self.tick()  # type: ignore[attr-defined]
            old_types, _ = es.registered.get(dev.gpu, (0, tick))
            es.registered[dev.gpu] = (old_types | types, tick)
        return _OK

    def _nvmlEventSetWait_v2(self, addr: int | None, out: int | None, timeout_ms: int) -> int:
        self._require_init()  # type: ignore[attr-defined]
        es = self._event_sets.get(addr or 0)
        if es is None or not out:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        deadline = time.monotonic() + timeout_ms / 1000.0
        es.handed_out = False
        while True:
            with self._lock:
                self._collect_events(es)
            if es.queue:
                _, gpu, xid = es.queue.popleft()
                es.handed_out = True
                data = abi.EventData.from_address(out)
                data.device = self.devices[gpu].handle  # type: ignore[attr-defined]
                data.eventType = pynvml.nvmlEventTypeXidCriticalError
                data.eventData = xid
                data.gpuInstanceId = data.computeInstanceId = 0xFFFFFFFF
                return _OK
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return pynvml.NVML_ERROR_TIMEOUT
            time.sleep(min(self._wait_slice(es, remaining), remaining))

    def _wait_slice(self, es: _EventSet, remaining: float) -> float:
        """How long to sleep before looking again.

        On the wall clock the next event's time is known, so the wait blocks until
        then like the real driver; a caller-supplied clock may jump at any moment,
        so it is polled.
        """
        if self._clock is not time.time:  # type: ignore[attr-defined]
            return _WAIT_SLICE_S
        horizon = es.seen_tick + int(remaining / TICK_S) + 1
        with self._lock:
            upcoming = [
                tick
                for tick, gpu, _ in self.engine.events(es.seen_tick, horizon)
                if gpu in es.registered
            ]
        if not upcoming:
            return remaining
        return max(_WAIT_SLICE_S, (min(upcoming) - es.seen_tick) * TICK_S)

    def _collect_events(self, es: _EventSet) -> None:
        tick = self.tick()  # type: ignore[attr-defined]
        if tick <= es.seen_tick:
            return
        es.queue.extend(self._due_events(es, tick))
        es.seen_tick = tick

    def _due_events(self, es: _EventSet, tick: int) -> list[tuple[int, int, int]]:
        """Events (tick, gpu, xid) of ticks (seen, ``tick``] that ``es`` registered for."""
        due = []
        for when, gpu, xid in self.engine.events(es.seen_tick, tick):
            types, since = es.registered.get(gpu, (0, tick))
            if types & pynvml.nvmlEventTypeXidCriticalError and when > since:
                due.append((when, gpu, xid))
        return due

    def events_settled(self) -> bool:
        """Whether every event due by now has been handed to a waiter that came back for more.

        On the wall clock a waiting thread takes an event within milliseconds of its tick; a
        caller-supplied clock can jump ticks faster than that thread is scheduled, so a test
        driving one waits for this before the next tick (the event is then stamped in its tick).
        """
        with self._lock:
            tick = self.tick()  # type: ignore[attr-defined]
            return not any(
                es.handed_out or es.queue or (tick > es.seen_tick and self._due_events(es, tick))
                for es in self._event_sets.values()
            )
