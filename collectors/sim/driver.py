"""The simulated libnvidia-ml: an object whose attributes are NVML C symbols.

Each symbol is a real ctypes callback, so nvidia-ml-py's own wrappers (argument
marshalling, struct versions, error mapping to NVMLError_*) run unchanged.
`install()` swaps `pynvml.nvmlLib` for a `SimulatedDriver`; a symbol the
simulated driver version lacks is simply not an attribute, which pynvml turns
into NVMLError_FunctionNotFound exactly as with an old real driver.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
import uuid
from collections.abc import Callable
from ctypes import POINTER, c_char_p, c_int, c_uint, c_ulonglong, c_void_p
from dataclasses import dataclass, field
from typing import Any

import pynvml

from collectors.sim import abi
from collectors.sim.compute import ComputeMixin, JobPids
from collectors.sim.devices import MigProfile
from collectors.sim.engine import TICK_S, Engine, GpuFrame
from collectors.sim.scenario import Scenario, ScenarioError, load_scenario
from collectors.sim.telemetry import TelemetryMixin

log = logging.getLogger(__name__)

Clock = Callable[[], float]

_UUID_NAMESPACE = uuid.UUID("6f1d0c6e-3a53-4b8e-9a3c-acce1a7c0de5")
_P_UINT = POINTER(c_uint)
_ERROR_STRINGS = {
    pynvml.NVML_SUCCESS: "Success",
    pynvml.NVML_ERROR_UNINITIALIZED: "Uninitialized",
    pynvml.NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    pynvml.NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    pynvml.NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    pynvml.NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    pynvml.NVML_ERROR_NOT_FOUND: "Not Found",
    pynvml.NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    pynvml.NVML_ERROR_TIMEOUT: "Timeout",
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    pynvml.NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH: "Argument version mismatch",
    pynvml.NVML_ERROR_NO_DATA: "No Data",
    pynvml.NVML_ERROR_UNKNOWN: "Unknown Error",
}
_ERROR_BUFFERS = {
    code: ctypes.create_string_buffer(text.encode()) for code, text in _ERROR_STRINGS.items()
}

# Driver branch that introduced a symbol (approximate); older versions lack it.
SYMBOL_SINCE: dict[str, int] = {
    "nvmlDeviceGetRemappedRows": 450,
    "nvmlDeviceGetMigMode": 450,
    "nvmlDeviceGetMaxMigDeviceCount": 450,
    "nvmlDeviceGetMigDeviceHandleByIndex": 450,
    "nvmlDeviceIsMigDeviceHandle": 450,
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": 450,
    "nvmlDeviceGetComputeRunningProcesses_v2": 460,
    "nvmlDeviceGetGraphicsRunningProcesses_v2": 460,
    "nvmlDeviceGetMemoryInfo_v2": 510,
    "nvmlDeviceGetComputeRunningProcesses_v3": 510,
    "nvmlDeviceGetGraphicsRunningProcesses_v3": 510,
    "nvmlGpmQueryDeviceSupport": 520,
    "nvmlGpmSampleAlloc": 520,
    "nvmlGpmSampleFree": 520,
    "nvmlGpmSampleGet": 520,
    "nvmlGpmMetricsGet": 520,
    "nvmlDeviceGetCurrentClocksEventReasons": 535,
}


class NvmlReturn(Exception):
    """Raised inside a symbol implementation to return an NVML error code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _guard(impl: Callable[..., int], name: str) -> Callable[..., int]:
    """Never let a Python exception escape into ctypes (it would return garbage)."""

    def symbol(*args: Any) -> int:
        try:
            return impl(*args)
        except NvmlReturn as ret:
            return ret.code
        except Exception:
            log.exception("simulated %s failed", name)
            return pynvml.NVML_ERROR_UNKNOWN

    return symbol


@dataclass(eq=False)
class SimDevice:
    """A device handle: a full GPU or a MIG device on one."""

    gpu: int
    uuid: bytes
    name: bytes
    bus_id: bytes
    bus: int
    mig: MigProfile | None = None
    parent: SimDevice | None = None
    gpu_instance: int = 0xFFFFFFFF
    compute_instance: int = 0xFFFFFFFF
    children: list[SimDevice] = field(default_factory=list)
    _buffer: ctypes.Array[ctypes.c_char] = field(
        default_factory=lambda: ctypes.create_string_buffer(16)
    )

    @property
    def handle(self) -> int:
        return ctypes.addressof(self._buffer)


def _uuid(seed: int, gpu: int, sub: int = 0) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{seed}/{gpu}/{sub}"))


class SimulatedDriver(ComputeMixin, TelemetryMixin):
    """Stands in for the loaded libnvidia-ml CDLL. Symbols are instance attributes."""

    def __init__(self, scenario: Scenario, clock: Clock, job_pids: JobPids | None) -> None:
        self.scenario = scenario
        self.model = scenario.hardware.model
        self.engine = Engine(scenario)
        self._clock = clock
        self._job_pids = job_pids
        self._frames: list[GpuFrame] = []
        self.start_clock()
        self._lock = threading.RLock()
        self._refcount = 0
        self._live: dict[int, SimDevice] = {}
        self.devices = self._make_devices()
        self._by_uuid = {d.uuid: d for d in self.devices}
        self._by_uuid.update({c.uuid: c for d in self.devices for c in d.children})
        self._symbols: dict[str, Any] = {}
        self._define_symbols()

    # -- construction ---------------------------------------------------------------------------
    def _make_devices(self) -> list[SimDevice]:
        devices = []
        for gpu in range(self.scenario.gpu_count):
            bus = 0x18 + gpu * 0x11 if gpu < 8 else 0x80 + gpu
            uuid = f"GPU-{_uuid(self.scenario.seed, gpu)}".encode()
            dev = SimDevice(
                gpu, uuid, self.model.name.encode(), f"00000000:{bus:02X}:00.0".encode(), bus
            )
            for j, profile_name in enumerate(self.scenario.hardware.mig):
                profile = self.model.mig_profile(profile_name)
                mig_uuid = f"MIG-{_uuid(self.scenario.seed, gpu, j + 1)}".encode()
                name = f"{self.model.name} MIG {profile.name}".encode()
                dev.children.append(
                    SimDevice(gpu, mig_uuid, name, dev.bus_id, bus, profile, dev, j + 1, 0)
                )
            devices.append(dev)
        return devices

    def _define_symbols(self) -> None:
        major = int(self.scenario.driver_version.split(".")[0])
        table = self.symbol_table()
        unknown = sorted(self.scenario.missing_symbols - set(table))
        if unknown:
            raise ScenarioError(
                f"{self.scenario.path}: [driver] missing_symbols: {unknown[0]!r} "
                "is not a simulated NVML symbol"
            )
        for name, (restype, argtypes) in table.items():
            if name in self.scenario.missing_symbols or SYMBOL_SINCE.get(name, 0) > major:
                continue
            impl = getattr(self, "_" + name)
            func = ctypes.CFUNCTYPE(restype, *argtypes)(
                impl if restype is not c_int else _guard(impl, name)
            )
            self._symbols[name] = func
            setattr(self, name, func)

    def symbol_table(self) -> dict[str, tuple[Any, tuple[Any, ...]]]:
        h, ph = c_void_p, c_void_p
        core: dict[str, tuple[Any, tuple[Any, ...]]] = {
            "nvmlInitWithFlags": (c_int, (c_uint,)),
            "nvmlInit_v2": (c_int, ()),
            "nvmlShutdown": (c_int, ()),
            "nvmlErrorString": (c_void_p, (c_int,)),
            "nvmlSystemGetDriverVersion": (c_int, (c_void_p, c_uint)),
            "nvmlSystemGetNVMLVersion": (c_int, (c_void_p, c_uint)),
            "nvmlSystemGetCudaDriverVersion": (c_int, (POINTER(c_int),)),
            "nvmlSystemGetCudaDriverVersion_v2": (c_int, (POINTER(c_int),)),
            "nvmlDeviceGetCount_v2": (c_int, (_P_UINT,)),
            "nvmlDeviceGetHandleByIndex_v2": (c_int, (c_uint, ph)),
            "nvmlDeviceGetHandleByUUID": (c_int, (c_char_p, ph)),
            "nvmlDeviceGetName": (c_int, (h, c_void_p, c_uint)),
            "nvmlDeviceGetUUID": (c_int, (h, c_void_p, c_uint)),
            "nvmlDeviceGetIndex": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetPciInfo_v3": (c_int, (h, c_void_p)),
            "nvmlDeviceGetMemoryInfo": (c_int, (h, c_void_p)),
            "nvmlDeviceGetMemoryInfo_v2": (c_int, (h, c_void_p)),
            "nvmlDeviceGetComputeRunningProcesses_v2": (c_int, (h, _P_UINT, c_void_p)),
            "nvmlDeviceGetComputeRunningProcesses_v3": (c_int, (h, _P_UINT, c_void_p)),
            "nvmlDeviceGetGraphicsRunningProcesses_v2": (c_int, (h, _P_UINT, c_void_p)),
            "nvmlDeviceGetGraphicsRunningProcesses_v3": (c_int, (h, _P_UINT, c_void_p)),
            "nvmlDeviceGetProcessUtilization": (c_int, (h, c_void_p, _P_UINT, c_ulonglong)),
            "nvmlDeviceGetMigMode": (c_int, (h, _P_UINT, _P_UINT)),
            "nvmlDeviceGetMaxMigDeviceCount": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetMigDeviceHandleByIndex": (c_int, (h, c_uint, ph)),
            "nvmlDeviceIsMigDeviceHandle": (c_int, (h, _P_UINT)),
            "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": (c_int, (h, ph)),
        }
        return core | self.telemetry_symbols()

    # -- shared helpers -------------------------------------------------------------------------
    def start_clock(self) -> None:
        """Make the clock's current value simulated time 0 (only before time has run)."""
        if self._frames:
            return
        self._t0 = self._clock()
        self.engine.epoch_us = int(self._t0 * 1e6)
        self._last_tick = 1
        self._frames_tick = -1

    def tick(self) -> int:
        """Current simulated tick (>= 1, never goes backwards)."""
        k = int((self._clock() - self._t0) / TICK_S) + 1
        if k < self._last_tick:
            return self._last_tick
        self._last_tick = k
        return k

    def now_s(self) -> float:
        return (self.tick() - 1) * TICK_S

    def frames(self) -> list[GpuFrame]:
        k = int((self._clock() - self._t0) / TICK_S) + 1
        if k == self._frames_tick:
            return self._frames
        with self._lock:
            frames = self.engine.frames(self.tick())
            self._frames, self._frames_tick = frames, self._last_tick
        return frames

    def _device(self, h: int | None) -> SimDevice:
        dev = self._live.get(h)  # type: ignore[arg-type]
        if dev is None:
            code = (
                pynvml.NVML_ERROR_UNINITIALIZED
                if self._refcount == 0
                else pynvml.NVML_ERROR_INVALID_ARGUMENT
            )
            raise NvmlReturn(code)
        return dev

    def _frame(self, h: int | None) -> tuple[SimDevice, GpuFrame]:
        """Handle lookup plus this GPU's frame; raises for lost GPUs."""
        dev = self._live.get(h)  # type: ignore[arg-type]
        if dev is None:
            self._device(h)
        k = int((self._clock() - self._t0) / TICK_S) + 1
        frames = self._frames if k == self._frames_tick else self.frames()
        frame = frames[dev.gpu]  # type: ignore[union-attr]
        if frame.lost:
            raise NvmlReturn(pynvml.NVML_ERROR_GPU_IS_LOST)
        return dev, frame  # type: ignore[return-value]

    def _gpu_frame(self, h: int | None) -> tuple[SimDevice, GpuFrame]:
        """Like _frame, for queries a MIG device handle does not answer."""
        dev, frame = self._frame(h)
        if dev.mig is not None:
            raise NvmlReturn(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return dev, frame

    @staticmethod
    def _write_str(addr: int | None, size: int, text: bytes) -> int:
        if not addr:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if size < len(text) + 1:
            return pynvml.NVML_ERROR_INSUFFICIENT_SIZE
        ctypes.memmove(addr, text + b"\0", len(text) + 1)
        return pynvml.NVML_SUCCESS

    @staticmethod
    def _write_handle(addr: int | None, dev: SimDevice) -> int:
        if not addr:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        c_void_p.from_address(addr).value = dev.handle
        return pynvml.NVML_SUCCESS

    # -- init / system --------------------------------------------------------------------------
    def _nvmlInitWithFlags(self, flags: int) -> int:
        with self._lock:
            self._refcount += 1
            self._live = {d.handle: d for d in self.devices}
            self._live.update({c.handle: c for d in self.devices for c in d.children})
        return pynvml.NVML_SUCCESS

    def _nvmlInit_v2(self) -> int:
        return self._nvmlInitWithFlags(0)

    def _nvmlShutdown(self) -> int:
        with self._lock:
            if self._refcount == 0:
                return pynvml.NVML_ERROR_UNINITIALIZED
            self._refcount -= 1
            if self._refcount == 0:
                self._live = {}
        return pynvml.NVML_SUCCESS

    def _nvmlErrorString(self, code: int) -> int:
        buf = _ERROR_BUFFERS.get(code, _ERROR_BUFFERS[pynvml.NVML_ERROR_UNKNOWN])
        return ctypes.addressof(buf)

    def _require_init(self) -> None:
        if self._refcount == 0:
            raise NvmlReturn(pynvml.NVML_ERROR_UNINITIALIZED)

    def _nvmlSystemGetDriverVersion(self, buf: int, size: int) -> int:
        self._require_init()
        return self._write_str(buf, size, self.scenario.driver_version.encode())

    def _nvmlSystemGetNVMLVersion(self, buf: int, size: int) -> int:
        self._require_init()
        cuda_major = self.scenario.cuda_version // 1000
        return self._write_str(buf, size, f"{cuda_major}.{self.scenario.driver_version}".encode())

    def _nvmlSystemGetCudaDriverVersion(self, out: Any) -> int:
        self._require_init()
        out[0] = self.scenario.cuda_version
        return pynvml.NVML_SUCCESS

    _nvmlSystemGetCudaDriverVersion_v2 = _nvmlSystemGetCudaDriverVersion

    # -- handles & identity ---------------------------------------------------------------------
    def _nvmlDeviceGetCount_v2(self, out: Any) -> int:
        self._require_init()
        out[0] = len(self.devices)
        return pynvml.NVML_SUCCESS

    def _nvmlDeviceGetHandleByIndex_v2(self, index: int, out: int | None) -> int:
        self._require_init()
        if index >= len(self.devices):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        dev = self.devices[index]
        if self.frames()[dev.gpu].lost:
            return pynvml.NVML_ERROR_GPU_IS_LOST
        return self._write_handle(out, dev)

    def _nvmlDeviceGetHandleByUUID(self, uuid: bytes | None, out: int | None) -> int:
        self._require_init()
        dev = self._by_uuid.get(uuid or b"")
        if dev is None:
            return pynvml.NVML_ERROR_NOT_FOUND
        if self.frames()[dev.gpu].lost:
            return pynvml.NVML_ERROR_GPU_IS_LOST
        return self._write_handle(out, dev)

    def _nvmlDeviceGetName(self, h: int, buf: int, size: int) -> int:
        dev, _ = self._frame(h)
        return self._write_str(buf, size, dev.name)

    def _nvmlDeviceGetUUID(self, h: int, buf: int, size: int) -> int:
        dev, _ = self._frame(h)
        return self._write_str(buf, size, dev.uuid)

    def _nvmlDeviceGetIndex(self, h: int, out: Any) -> int:
        dev, _ = self._gpu_frame(h)
        out[0] = dev.gpu
        return pynvml.NVML_SUCCESS

    def _nvmlDeviceGetPciInfo_v3(self, h: int, out: int | None) -> int:
        dev, _ = self._frame(h)
        if not out:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        info = abi.PciInfo.from_address(out)
        info.busIdLegacy = dev.bus_id
        info.busId = dev.bus_id
        info.domain, info.bus, info.device = 0, dev.bus, 0
        info.pciDeviceId = self.model.pci_device_id
        info.pciSubSystemId = self.model.pci_subsystem_id
        return pynvml.NVML_SUCCESS


class SimulatedNvml:
    """An installed (or installable) simulated NVML; also a context manager."""

    def __init__(
        self, scenario: Scenario | str, *, clock: Clock = time.time, job_pids: JobPids | None = None
    ) -> None:
        self.scenario = load_scenario(scenario) if isinstance(scenario, str) else scenario
        self.driver = SimulatedDriver(self.scenario, clock, job_pids)
        self._saved: Any = None
        self._installed = False

    @property
    def engine(self) -> Engine:
        return self.driver.engine

    def now(self) -> float:
        """Simulated seconds since install, on the driver's 20 ms tick."""
        return self.driver.now_s()

    def events_settled(self) -> bool:
        """Every XID event due by now was taken by a waiter that came back for more (a test
        driving a clock that jumps waits for this before each tick)."""
        return self.driver.events_settled()

    def truth(self, gpu: int) -> GpuFrame:
        """What GPU `gpu` reports right now (ground truth for tests)."""
        return self.driver.frames()[gpu]

    def install(self) -> SimulatedNvml:
        if self._installed:
            return self
        self.driver.start_clock()
        with pynvml.libLoadLock:
            self._saved = pynvml.nvmlLib
            pynvml.nvmlLib = self.driver
            pynvml._nvmlGetFunctionPointer_cache.clear()
        self._installed = True
        return self

    def uninstall(self) -> None:
        if not self._installed:
            return
        with pynvml.libLoadLock:
            if pynvml.nvmlLib is self.driver:
                pynvml.nvmlLib = self._saved
            pynvml._nvmlGetFunctionPointer_cache.clear()
        self._installed = False

    def __enter__(self) -> SimulatedNvml:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


def install(
    scenario: Scenario | str, *, clock: Clock = time.time, job_pids: JobPids | None = None
) -> SimulatedNvml:
    """Swap pynvml's library for a simulated driver running `scenario`."""
    return SimulatedNvml(scenario, clock=clock, job_pids=job_pids).install()
