"""Which processes use a GPU, how much memory and SM time each takes, and which are the job's.

NVML lists compute processes per device (``_v3`` with ``_v2`` as fallback) and keeps a
short history of per-process utilization samples; asking with the last-seen timestamp
returns only the new ones. The watched job's PIDs are matched against both so the store
knows which GPUs the job actually uses.

Both are list queries (count in, count out). nvidia-ml-py's wrappers ask twice every time,
once for the size and once for the data, into a fresh array; a :class:`Listing` keeps one
buffer per device and asks once, growing it (and asking again) only when the driver says
it is too small, the way DCGM reads them.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pynvml

from agent.model import BatchBuilder
from collectors.nvml_probe import Query, Variant, query

_NOT_AVAILABLE = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value


def _layout(row_type: Any, names: tuple[str, ...], codes: str) -> struct.Struct:
    """A ``struct`` reading ``names`` of one ``row_type`` (its padding skipped)."""
    fmt, at = "=", 0
    for name, code in zip(names, codes):
        offset = getattr(row_type, name).offset
        fmt += "x" * (offset - at) + code
        at = offset + struct.calcsize("=" + code)
    return struct.Struct(fmt + "x" * (ctypes.sizeof(row_type) - at))


_PROCESS = _layout(pynvml.c_nvmlProcessInfo_v3_t, ("pid", "usedGpuMemory"), "IQ")
_SAMPLE = _layout(
    pynvml.c_nvmlProcessUtilizationSample_t, ("pid", "timeStamp", "smUtil", "memUtil"), "IQII"
)


class Listing:
    """A reusable result buffer for one NVML list query of one device: one call a tick."""

    def __init__(self, row_type: Any, layout: struct.Struct, capacity: int = 16) -> None:
        self.row_type = row_type
        self.layout = layout
        self.count = ctypes.c_uint(0)
        self.count_ref = ctypes.byref(self.count)
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = (self.row_type * capacity)()
        self.view = memoryview(self.buffer).cast("B")

    def call(self, ask: Any) -> list[tuple[int, ...]]:
        """``ask()`` calls NVML with this buffer; grow and ask again while it is too small."""
        while True:
            self.count.value = self.capacity
            ret = ask()
            if ret != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
                break
            self._allocate(self.count.value * 2 + 5)  # room for a few more next time
        pynvml._nvmlCheckReturn(ret)
        rows = self.count.value * self.layout.size
        return list(self.layout.iter_unpack(self.view[:rows]))


def running_processes(handle: Any, function: str, listing: Listing) -> list[tuple[int, ...]]:
    """(pid, used GPU memory or None) of each compute process, in one driver call."""
    fn = pynvml._nvmlGetFunctionPointer(function)  # raises FunctionNotFound on old drivers
    rows = listing.call(lambda: fn(handle, listing.count_ref, listing.buffer))
    return [(pid, None if used == _NOT_AVAILABLE else used) for pid, used in rows]


def process_samples(handle: Any, since_us: int, listing: Listing) -> list[tuple[int, ...]]:
    """(pid, timestamp, sm %, memory %) samples newer than ``since_us``; none new is []."""
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetProcessUtilization")
    since = ctypes.c_ulonglong(since_us)
    try:
        return listing.call(lambda: fn(handle, listing.buffer, listing.count_ref, since))
    except pynvml.NVMLError_NotFound:
        return []


@dataclass(slots=True)
class JobView:
    """The job's PIDs for the current tick, shared by every device's readers."""

    pids: frozenset[int] = frozenset()


@dataclass(slots=True)
class ProcessReader:
    """Compute processes and per-process utilization of one device (a GPU or a MIG device)."""

    handle: Any
    entity: str
    job: JobView
    per_process: bool = True  # False on MIG devices: the parent GPU records each process
    job_processes: int = 0  # of the last tick, for the device's ``used_by_job`` attribute
    last_seen_us: int = 0
    known: dict[int, bool] = field(default_factory=dict)  # pid -> belongs to the job
    processes_buffer: Listing = field(
        default_factory=lambda: Listing(pynvml.c_nvmlProcessInfo_v3_t, _PROCESS)
    )
    samples_buffer: Listing = field(
        default_factory=lambda: Listing(pynvml.c_nvmlProcessUtilizationSample_t, _SAMPLE)
    )

    def queries(self) -> list[Query]:
        return [self.process_query(), self.utilization_query()]

    def process_query(self) -> Query:
        """The compute processes, newest struct version first."""
        return Query(
            "compute processes",
            tuple(
                Variant(
                    name,
                    partial(running_processes, self.handle, name, self.processes_buffer),
                    self.emit_processes,
                )
                for name in (
                    "nvmlDeviceGetComputeRunningProcesses_v3",
                    "nvmlDeviceGetComputeRunningProcesses_v2",
                )
            ),
        )

    def utilization_query(self) -> Query:
        return query(
            "process utilization",
            "nvmlDeviceGetProcessUtilization",
            self.fetch_utilization,
            self.emit_utilization,
        )

    def emit_processes(self, b: BatchBuilder, processes: list[tuple[int, ...]]) -> None:
        job = self.job.pids
        e = self.entity
        job_memory = 0
        job_count = 0
        seen: dict[int, bool] = {}
        for pid, memory in processes:  # memory None where the driver cannot tell (WDDM)
            in_job = pid in job
            if in_job:
                job_count += 1
                job_memory += memory or 0
            seen[pid] = in_job
            if not self.per_process:
                continue
            b.add(f"{e}/pid{pid}", "gpu.process.memory", memory)
            if self.known.get(pid) is not in_job:
                b.describe(f"{e}/pid{pid}", pid=pid, gpu=e, job=in_job)
        self.known = seen
        self.job_processes = job_count
        b.add(e, "gpu.job.memory", job_memory)
        b.add(e, "gpu.job.processes", job_count)

    def fetch_utilization(self) -> list[tuple[int, ...]]:
        """Samples newer than the last seen; none new is an answer, not an error."""
        return process_samples(self.handle, self.last_seen_us, self.samples_buffer)

    def emit_utilization(self, b: BatchBuilder, samples: list[tuple[int, ...]]) -> None:
        if not samples:
            return
        latest: dict[int, tuple[int, ...]] = {}
        newest = self.last_seen_us
        for sample in samples:
            pid, ts = sample[0], sample[1]
            if ts > newest:
                newest = ts
            kept = latest.get(pid)
            if kept is None or ts >= kept[1]:
                latest[pid] = sample
        self.last_seen_us = newest
        e = self.entity
        for pid, _, sm, memory in latest.values():
            entity = f"{e}/pid{pid}"
            b.add(entity, "gpu.process.sm_utilization", sm / 100.0)
            b.add(entity, "gpu.process.memory_utilization", memory / 100.0)
