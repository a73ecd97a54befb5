"""Memory, processes, per-process utilization and MIG: what runs on a simulated GPU.

A mixin of SimulatedDriver. Processes come from the scenario's job: one slot
per (GPU, process) or per MIG device, filled with the watched job's PIDs
(`job_pids`) so an agent can match them to its process tree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pynvml

from collectors.sim import abi
from collectors.sim.engine import TICK_S, GpuFrame

if TYPE_CHECKING:
    from collectors.sim.driver import SimDevice

JobPids = Callable[[], Sequence[int]]
SYNTHETIC_PID_BASE = 40_000
_CONTEXT_BYTES = 512 << 20  # CUDA context of each process, counted in its usedGpuMemory


class ComputeMixin:
    model: Any
    scenario: Any
    engine: Any
    devices: list[SimDevice]
    _job_pids: JobPids | None
    _lock: Any

    # -- memory & processes ---------------------------------------------------------------------
    def _memory(self, dev: SimDevice, frame: GpuFrame) -> tuple[int, int, int]:
        """(total, reserved, used) in bytes, nvmlMemory_v2 semantics."""
        m = self.model
        if dev.mig is None:
            return m.memory_total_bytes, m.memory_reserved_bytes, frame.memory_used
        total = dev.mig.memory_mib << 20
        used = (
            frame.memory_used * dev.mig.memory_mib // (m.memory_total_mib - m.memory_reserved_mib)
        )
        return total, 0, min(used, total)

    def _nvmlDeviceGetMemoryInfo(self, h: int, out: int | None) -> int:
        total, reserved, used = self._memory(*self._frame(h))
        if not out:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        mem = abi.Memory.from_address(out)
        mem.total, mem.free, mem.used = total, total - reserved - used, used + reserved
        return pynvml.NVML_SUCCESS

    def _nvmlDeviceGetMemoryInfo_v2(self, h: int, out: int | None) -> int:
        total, reserved, used = self._memory(*self._frame(h))
        if not out:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        mem = abi.MemoryV2.from_address(out)
        if mem.version != pynvml.nvmlMemory_v2:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        mem.total, mem.reserved, mem.free, mem.used = total, reserved, total - reserved - used, used
        return pynvml.NVML_SUCCESS

    def job_pids(self) -> list[int]:
        """PIDs for all process slots: one per (GPU, process) or per MIG device."""
        per_gpu = (
            max(1, len(self.scenario.hardware.mig))
            if self.scenario.hardware.mig
            else self.scenario.processes_per_gpu
        )
        slots = per_gpu * len(self.devices)
        if self._job_pids is None:
            return [SYNTHETIC_PID_BASE + i for i in range(slots)]
        pids = [int(p) for p in self._job_pids()]
        if not pids:
            return []
        if len(pids) > slots:
            return pids[-slots:]  # drop the launcher; workers own the GPUs
        return [pids[i % len(pids)] for i in range(slots)]

    def processes(self, dev: SimDevice, frame: GpuFrame) -> list[tuple[int, int, int, int]]:
        """(pid, usedGpuMemory, gpuInstanceId, computeInstanceId) running on `dev`."""
        pids = self.job_pids()
        if not pids or (self.scenario.processes_per_gpu == 0 and not self.scenario.hardware.mig):
            return []
        if self.scenario.hardware.mig:
            parent = dev.parent or dev
            per_gpu = len(parent.children)
            kids = [dev] if dev.mig is not None else parent.children
            out = []
            for child in kids:
                _, _, used = self._memory(child, frame)
                pid = pids[parent.gpu * per_gpu + child.gpu_instance - 1]
                out.append((pid, used, child.gpu_instance, child.compute_instance))
            return out
        n = self.scenario.processes_per_gpu
        share = max(frame.memory_used // n, _CONTEXT_BYTES) if frame.memory_used else 0
        return [(pids[dev.gpu * n + i], share, 0xFFFFFFFF, 0xFFFFFFFF) for i in range(n)]

    def _running(self, h: int, count: Any, buf: int | None, compute: bool) -> int:
        dev, frame = self._frame(h)
        procs = self.processes(dev, frame) if compute else []
        if not procs:
            count[0] = 0
            return pynvml.NVML_SUCCESS
        if buf is None or count[0] < len(procs):
            count[0] = len(procs)
            return pynvml.NVML_ERROR_INSUFFICIENT_SIZE
        arr = (abi.ProcessInfo * len(procs)).from_address(buf)
        for slot, (pid, used, gi, ci) in zip(arr, procs, strict=True):
            slot.pid, slot.usedGpuMemory, slot.gpuInstanceId, slot.computeInstanceId = (
                pid,
                used,
                gi,
                ci,
            )
        count[0] = len(procs)
        return pynvml.NVML_SUCCESS

    def _nvmlDeviceGetComputeRunningProcesses_v3(self, h: int, count: Any, buf: int | None) -> int:
        return self._running(h, count, buf, compute=True)

    def _nvmlDeviceGetGraphicsRunningProcesses_v3(self, h: int, count: Any, buf: int | None) -> int:
        return self._running(h, count, buf, compute=False)

    _nvmlDeviceGetComputeRunningProcesses_v2 = _nvmlDeviceGetComputeRunningProcesses_v3
    _nvmlDeviceGetGraphicsRunningProcesses_v2 = _nvmlDeviceGetGraphicsRunningProcesses_v3

    def _nvmlDeviceGetProcessUtilization(
        self, h: int, buf: int | None, count: Any, last_seen: int
    ) -> int:
        dev, frame = self._gpu_frame(h)
        if self.scenario.hardware.mig:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        procs = self.processes(dev, frame)
        with self._lock:
            samples = self.engine.process_samples(self.tick())[dev.gpu]
        epoch, n = self.engine.epoch_us, max(1, len(procs))
        rows = []
        for tick, sm, mem in samples:
            ts = epoch + int(round((tick - 1) * TICK_S * 1e6))
            if ts > last_seen:
                rows.extend((pid, ts, sm // n, mem // n) for pid, *_ in procs)
        if not rows:
            return pynvml.NVML_ERROR_NOT_FOUND
        if buf is None or count[0] < len(rows):
            count[0] = len(rows)
            return pynvml.NVML_ERROR_INSUFFICIENT_SIZE
        arr = (abi.ProcessUtilizationSample * len(rows)).from_address(buf)
        for slot, (pid, ts, sm, mem) in zip(arr, rows, strict=True):
            slot.pid, slot.timeStamp, slot.smUtil, slot.memUtil, slot.encUtil, slot.decUtil = (
                pid,
                ts,
                sm,
                mem,
                0,
                0,
            )
        count[0] = len(rows)
        return pynvml.NVML_SUCCESS

    # -- MIG ------------------------------------------------------------------------------------
    def _nvmlDeviceGetMigMode(self, h: int, current: Any, pending: Any) -> int:
        self._gpu_frame(h)
        if not self.model.mig_capable:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        current[0] = pending[0] = 1 if self.scenario.hardware.mig else 0
        return pynvml.NVML_SUCCESS

    def _nvmlDeviceGetMaxMigDeviceCount(self, h: int, out: Any) -> int:
        self._gpu_frame(h)
        if not self.model.mig_capable:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        out[0] = 7
        return pynvml.NVML_SUCCESS

    def _nvmlDeviceGetMigDeviceHandleByIndex(self, h: int, index: int, out: int | None) -> int:
        dev, _ = self._frame(h)
        if dev.mig is not None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if not self.model.mig_capable:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        if index >= 7:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if index >= len(dev.children):
            return pynvml.NVML_ERROR_NOT_FOUND
        return self._write_handle(out, dev.children[index])

    def _nvmlDeviceIsMigDeviceHandle(self, h: int, out: Any) -> int:
        dev = self._device(h)
        out[0] = 1 if dev.mig is not None else 0
        return pynvml.NVML_SUCCESS

    def _nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, h: int, out: int | None) -> int:
        dev, _ = self._frame(h)
        if dev.parent is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        return self._write_handle(out, dev.parent)
