"""Per-device telemetry symbols: utilization, power, clocks, PCIe, NVLink, ECC, field values.

A mixin of SimulatedDriver; it reads the current GpuFrame and answers with the
units NVML uses (percent, mW, mJ, MHz, degrees C, bytes, KiB).
"""

from __future__ import annotations

import ctypes
import struct
from ctypes import POINTER, c_int, c_uint, c_ulonglong, c_void_p
from typing import Any

import pynvml

from collectors.sim import abi
from collectors.sim.engine import GpuFrame
from collectors.sim.gpm import GpmEventsMixin

_P_UINT = POINTER(c_uint)
_P_ULL = POINTER(c_ulonglong)
_OK = pynvml.NVML_SUCCESS
_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
_ULL = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
_UINT = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
_FV = struct.Struct("<IIqqIIQ")  # nvmlFieldValue_t, value union as its 64-bit member
assert _FV.size == ctypes.sizeof(abi.FieldValue)
_RAW_OVERHEAD = 1.06  # NVLink protocol overhead on top of data bytes


class _Unsupported(Exception):
    """A field the part lacks: NOT_SUPPORTED in that field's nvmlReturn only."""


class _BadScope(Exception):
    """A field asked for a link or scope that does not exist."""


class TelemetryMixin(GpmEventsMixin):
    model: Any
    scenario: Any

    def telemetry_symbols(self) -> dict[str, tuple[Any, tuple[Any, ...]]]:
        h = c_void_p
        own: dict[str, tuple[Any, tuple[Any, ...]]] = {
            "nvmlDeviceGetUtilizationRates": (c_int, (h, c_void_p)),
            "nvmlDeviceGetTemperature": (c_int, (h, c_uint, _P_UINT)),
            "nvmlDeviceGetPowerUsage": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetEnforcedPowerLimit": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetPowerManagementLimit": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetTotalEnergyConsumption": (c_int, (h, _P_ULL)),
            "nvmlDeviceGetClockInfo": (c_int, (h, c_uint, _P_UINT)),
            "nvmlDeviceGetMaxClockInfo": (c_int, (h, c_uint, _P_UINT)),
            "nvmlDeviceGetPerformanceState": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetFanSpeed": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetCurrentClocksEventReasons": (c_int, (h, _P_ULL)),
            "nvmlDeviceGetCurrentClocksThrottleReasons": (c_int, (h, _P_ULL)),
            "nvmlDeviceGetCurrPcieLinkGeneration": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetMaxPcieLinkGeneration": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetCurrPcieLinkWidth": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetMaxPcieLinkWidth": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetPcieReplayCounter": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetNvLinkState": (c_int, (h, c_uint, _P_UINT)),
            "nvmlDeviceGetTotalEccErrors": (c_int, (h, c_uint, c_uint, _P_ULL)),
            "nvmlDeviceGetRemappedRows": (c_int, (h, _P_UINT, _P_UINT, _P_UINT, _P_UINT)),
            "nvmlDeviceGetFieldValues": (c_int, (h, c_int, c_void_p)),
            "nvmlDeviceGetPcieThroughput": (c_int, (h, c_uint, _P_UINT)),
            "nvmlDeviceGetEncoderUtilization": (c_int, (h, _P_UINT, _P_UINT)),
            "nvmlDeviceGetDecoderUtilization": (c_int, (h, _P_UINT, _P_UINT)),
            "nvmlDeviceGetPowerManagementLimitConstraints": (c_int, (h, _P_UINT, _P_UINT)),
            "nvmlDeviceGetTemperatureThreshold": (c_int, (h, c_uint, _P_UINT)),
            "nvmlDeviceGetCudaComputeCapability": (c_int, (h, POINTER(c_int), POINTER(c_int))),
            "nvmlDeviceGetPersistenceMode": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetEccMode": (c_int, (h, _P_UINT, _P_UINT)),
        }
        return own | self.gpm_event_symbols()

    # -- utilization, thermals, power -----------------------------------------------------------
    def _nvmlDeviceGetUtilizationRates(self, h: int, out: int | None) -> int:
        _, f = self._gpu_frame(h)
        if self.scenario.hardware.mig:
            return _NOT_SUPPORTED  # GPU-wide utilization is not reported in MIG mode
        if not out:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        util = abi.Utilization.from_address(out)
        util.gpu, util.memory = f.util_gpu, f.util_memory
        return _OK

    def _nvmlDeviceGetTemperature(self, h: int, sensor: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        out[0] = f.temperature_c
        return _OK

    def _nvmlDeviceGetPowerUsage(self, h: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        out[0] = f.power_avg_mw
        return _OK

    def _nvmlDeviceGetEnforcedPowerLimit(self, h: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        out[0] = f.power_limit_mw
        return _OK

    _nvmlDeviceGetPowerManagementLimit = _nvmlDeviceGetEnforcedPowerLimit

    def _nvmlDeviceGetTotalEnergyConsumption(self, h: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        if not self.model.energy:
            return _NOT_SUPPORTED
        out[0] = f.energy_mj
        return _OK

    def _nvmlDeviceGetFanSpeed(self, h: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        if not self.model.fan:
            return _NOT_SUPPORTED
        out[0] = f.fan_pct
        return _OK

    def _nvmlDeviceGetPerformanceState(self, h: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        out[0] = f.pstate
        return _OK

    def _nvmlDeviceGetPowerManagementLimitConstraints(self, h: int, low: Any, high: Any) -> int:
        self._gpu_frame(h)
        low[0], high[0] = int(self.model.power_min_w * 1000), int(self.model.power_limit_w * 1000)
        return _OK

    def _nvmlDeviceGetTemperatureThreshold(self, h: int, kind: int, out: Any) -> int:
        self._gpu_frame(h)
        limits = {
            pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: self.model.temp_shutdown_c,
            pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: self.model.temp_slowdown_c,
        }
        if kind not in limits:
            return _NOT_SUPPORTED
        out[0] = limits[kind]
        return _OK

    def _nvmlDeviceGetEncoderUtilization(self, h: int, util: Any, period_us: Any) -> int:
        self._gpu_frame(h)
        util[0], period_us[0] = 0, 167_000  # training jobs leave NVENC/NVDEC idle
        return _OK

    _nvmlDeviceGetDecoderUtilization = _nvmlDeviceGetEncoderUtilization

    # -- identity-like modes --------------------------------------------------------------------
    def _nvmlDeviceGetCudaComputeCapability(self, h: int, major: Any, minor: Any) -> int:
        self._frame(h)
        major[0], minor[0] = self.model.compute_capability
        return _OK

    def _nvmlDeviceGetPersistenceMode(self, h: int, out: Any) -> int:
        self._gpu_frame(h)
        out[0] = 0 if self.model.fan else 1  # servers run nvidia-persistenced, workstations rarely
        return _OK

    def _nvmlDeviceGetEccMode(self, h: int, current: Any, pending: Any) -> int:
        self._gpu_frame(h)
        if not self.model.ecc:
            return _NOT_SUPPORTED
        current[0] = pending[0] = 1
        return _OK

    # -- clocks ---------------------------------------------------------------------------------
    def _nvmlDeviceGetClockInfo(self, h: int, kind: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        if kind in (pynvml.NVML_CLOCK_GRAPHICS, pynvml.NVML_CLOCK_SM):
            out[0] = f.sm_clock_mhz
        elif kind == pynvml.NVML_CLOCK_MEM:
            out[0] = f.mem_clock_mhz
        elif kind == pynvml.NVML_CLOCK_VIDEO:
            out[0] = f.video_clock_mhz
        else:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        return _OK

    def _nvmlDeviceGetMaxClockInfo(self, h: int, kind: int, out: Any) -> int:
        self._gpu_frame(h)
        m = self.model
        clocks = {
            pynvml.NVML_CLOCK_GRAPHICS: m.max_sm_clock_mhz,
            pynvml.NVML_CLOCK_SM: m.max_sm_clock_mhz,
            pynvml.NVML_CLOCK_MEM: m.mem_clock_mhz,
            pynvml.NVML_CLOCK_VIDEO: m.max_video_clock_mhz,
        }
        if kind not in clocks:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        out[0] = clocks[kind]
        return _OK

    def _nvmlDeviceGetCurrentClocksEventReasons(self, h: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        out[0] = f.reasons
        return _OK

    _nvmlDeviceGetCurrentClocksThrottleReasons = _nvmlDeviceGetCurrentClocksEventReasons

    # -- PCIe / NVLink --------------------------------------------------------------------------
    def _nvmlDeviceGetCurrPcieLinkGeneration(self, h: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        out[0] = (
            self.model.pcie_gen if f.pstate == self.model.pstate_busy else 1
        )  # links downtrain when idle
        return _OK

    def _nvmlDeviceGetMaxPcieLinkGeneration(self, h: int, out: Any) -> int:
        self._gpu_frame(h)
        out[0] = self.model.pcie_gen
        return _OK

    def _nvmlDeviceGetCurrPcieLinkWidth(self, h: int, out: Any) -> int:
        self._gpu_frame(h)
        out[0] = self.model.pcie_width
        return _OK

    _nvmlDeviceGetMaxPcieLinkWidth = _nvmlDeviceGetCurrPcieLinkWidth

    def _nvmlDeviceGetPcieThroughput(self, h: int, counter: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES:
            out[0] = f.pcie_tx_kbps
        elif counter == pynvml.NVML_PCIE_UTIL_RX_BYTES:
            out[0] = f.pcie_rx_kbps
        else:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        return _OK

    def _nvmlDeviceGetPcieReplayCounter(self, h: int, out: Any) -> int:
        _, f = self._gpu_frame(h)
        out[0] = f.pcie_replays
        return _OK

    def _nvmlDeviceGetNvLinkState(self, h: int, link: int, out: Any) -> int:
        self._gpu_frame(h)
        if not self.model.nvlink_links:
            return _NOT_SUPPORTED
        if link >= self.model.nvlink_links:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        out[0] = pynvml.NVML_FEATURE_ENABLED
        return _OK

    # -- ECC ------------------------------------------------------------------------------------
    def _nvmlDeviceGetTotalEccErrors(
        self, h: int, error_type: int, counter_type: int, out: Any
    ) -> int:
        _, f = self._gpu_frame(h)
        if not self.model.ecc:
            return _NOT_SUPPORTED
        if error_type not in (0, 1) or counter_type not in (0, 1):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        out[0] = (
            f.dbe_volatile
            if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
            else f.sbe_volatile
        )
        return _OK

    def _nvmlDeviceGetRemappedRows(
        self, h: int, cor: Any, unc: Any, pending: Any, failure: Any
    ) -> int:
        _, f = self._gpu_frame(h)
        if not self.model.remapped_rows:
            return _NOT_SUPPORTED
        cor[0], unc[0], pending[0], failure[0] = f.remapped_cor, f.remapped_unc, f.remap_pending, 0
        return _OK

    # -- field values ---------------------------------------------------------------------------
    def _nvmlDeviceGetFieldValues(self, h: int, count: int, addr: int | None) -> int:
        dev, f = self._frame(h)
        if count < 0 or (count and not addr):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if not count:
            return _OK
        # One read and one write of the caller's array. Answers are cached per frame,
        # whole requests too: an agent asks for the same field list every poll.
        size = _FV.size
        raw = ctypes.string_at(addr, size * count)
        cache = f.field_cache
        reply = cache.get(raw)
        if reply is None:
            out = bytearray(size * count)
            ts = f.timestamp_us
            mig = dev.mig is not None
            for i, (fid, scope, *_) in enumerate(_FV.iter_unpack(raw)):
                ret, kind, value = (_NOT_SUPPORTED, 0, 0) if mig else self._field(f, fid, scope)
                _FV.pack_into(out, i * size, fid, scope, ts, 0, kind, ret, value)
            reply = cache[raw] = bytes(out)
        ctypes.memmove(addr, reply, len(reply))
        return _OK

    def _field(self, f: GpuFrame, fid: int, scope: int) -> tuple[int, int, int]:
        """(nvmlReturn, valueType, value) of one field; a uiVal is the low half of the union."""
        handler = _FIELDS.get(fid)
        if handler is None or fid in self.scenario.missing_fields:
            return _NOT_SUPPORTED, 0, 0
        try:
            kind, value = handler(self, f, scope)
        except _Unsupported:
            return _NOT_SUPPORTED, 0, 0
        except _BadScope:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT, 0, 0
        return _OK, kind, value

    def _link(self, scope: int) -> int:
        if not self.model.nvlink_links:
            raise _Unsupported
        if scope >= self.model.nvlink_links:
            raise _BadScope
        return scope

    def _ecc(self) -> None:
        if not self.model.ecc:
            raise _Unsupported


def _energy(d: TelemetryMixin, f: GpuFrame, scope: int) -> tuple[int, int]:
    if not d.model.energy:
        raise _Unsupported
    return _ULL, f.energy_mj


def _memory_temp(d: TelemetryMixin, f: GpuFrame, scope: int) -> tuple[int, int]:
    if not d.model.hbm:
        raise _Unsupported
    return _UINT, f.memory_temp_c


def _ecc_field(attr: str):  # noqa: ANN202 - small factory
    def read(d: TelemetryMixin, f: GpuFrame, scope: int) -> tuple[int, int]:
        d._ecc()
        return _ULL, getattr(f, attr)

    return read


def _remap_field(attr: str):  # noqa: ANN202
    def read(d: TelemetryMixin, f: GpuFrame, scope: int) -> tuple[int, int]:
        if not d.model.remapped_rows:
            raise _Unsupported
        return _UINT, getattr(f, attr)

    return read


def _nvlink_field(direction: str, raw: bool, divisor: int):  # noqa: ANN202
    attr = f"nvlink_{direction}_bytes"

    def read(d: TelemetryMixin, f: GpuFrame, scope: int) -> tuple[int, int]:
        value = getattr(f, attr)[d._link(scope)]
        if raw:  # protocol overhead on top of the data bytes, same 64-bit wrap
            value = int(value * _RAW_OVERHEAD) % (1 << 64)
        return _ULL, value // divisor

    return read


def _nvlink_count(d: TelemetryMixin, f: GpuFrame, scope: int) -> tuple[int, int]:
    if not d.model.nvlink_links:
        raise _Unsupported
    return _UINT, d.model.nvlink_links


def _nvlink_state(d: TelemetryMixin, f: GpuFrame, scope: int) -> tuple[int, int]:
    d._link(scope)
    return _UINT, 1


def _nvlink_speed(d: TelemetryMixin, f: GpuFrame, scope: int) -> tuple[int, int]:
    if not d.model.nvlink_links:
        raise _Unsupported
    return _UINT, int(d.model.nvlink_link_gbps * 1000)


def _power_limit(kind: str):  # noqa: ANN202
    def read(d: TelemetryMixin, f: GpuFrame, scope: int) -> tuple[int, int]:
        m = d.model
        values = {
            "min": m.power_min_w * 1000,
            "max": m.power_limit_w * 1000,
            "default": m.power_limit_w * 1000,
            "current": f.power_limit_mw,
        }
        return _UINT, int(values[kind])

    return read


_FIELDS: dict[int, Any] = {
    pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: lambda d, f, s: (_ULL, f.pcie_tx_bytes),
    pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: lambda d, f, s: (_ULL, f.pcie_rx_bytes),
    pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER: lambda d, f, s: (_UINT, f.pcie_replays),
    pynvml.NVML_FI_DEV_POWER_INSTANT: lambda d, f, s: (_UINT, f.power_inst_mw),
    pynvml.NVML_FI_DEV_POWER_AVERAGE: lambda d, f, s: (_UINT, f.power_avg_mw),
    pynvml.NVML_FI_DEV_POWER_MIN_LIMIT: _power_limit("min"),
    pynvml.NVML_FI_DEV_POWER_MAX_LIMIT: _power_limit("max"),
    pynvml.NVML_FI_DEV_POWER_DEFAULT_LIMIT: _power_limit("default"),
    pynvml.NVML_FI_DEV_POWER_CURRENT_LIMIT: _power_limit("current"),
    pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION: _energy,
    pynvml.NVML_FI_DEV_ENERGY: _energy,
    pynvml.NVML_FI_DEV_MEMORY_TEMP: _memory_temp,
    pynvml.NVML_FI_DEV_TEMPERATURE_SHUTDOWN_TLIMIT: lambda d, f, s: (
        _UINT,
        d.model.temp_shutdown_c,
    ),
    pynvml.NVML_FI_DEV_TEMPERATURE_SLOWDOWN_TLIMIT: lambda d, f, s: (
        _UINT,
        d.model.temp_slowdown_c,
    ),
    pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL: _ecc_field("sbe_volatile"),
    pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL: _ecc_field("dbe_volatile"),
    pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL: _ecc_field("sbe_volatile"),
    pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL: _ecc_field("dbe_volatile"),
    pynvml.NVML_FI_DEV_REMAPPED_COR: _remap_field("remapped_cor"),
    pynvml.NVML_FI_DEV_REMAPPED_UNC: _remap_field("remapped_unc"),
    pynvml.NVML_FI_DEV_REMAPPED_PENDING: _remap_field("remap_pending"),
    pynvml.NVML_FI_DEV_REMAPPED_FAILURE: _remap_field("remap_failure"),
    pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT: _nvlink_count,
    pynvml.NVML_FI_DEV_NVLINK_GET_STATE: _nvlink_state,
    pynvml.NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON: _nvlink_speed,
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: _nvlink_field("tx", False, 1024),
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: _nvlink_field("rx", False, 1024),
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX: _nvlink_field("tx", True, 1024),
    pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX: _nvlink_field("rx", True, 1024),
    pynvml.NVML_FI_DEV_NVLINK_COUNT_XMIT_BYTES: _nvlink_field("tx", False, 1),
    pynvml.NVML_FI_DEV_NVLINK_COUNT_RCV_BYTES: _nvlink_field("rx", False, 1),
}
