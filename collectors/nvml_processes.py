"""Which processes use a GPU, how much memory and SM time each takes, and which are the job's.

NVML lists compute processes per device (``_v3`` with ``_v2`` as fallback) and keeps a
short history of per-process utilization samples; asking with the last-seen timestamp
returns only the new ones. The watched job's PIDs are matched against both so the store
knows which GPUs the job actually uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pynvml

from agent.model import BatchBuilder
from collectors.nvml_probe import Query, Variant, query


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

    def queries(self) -> list[Query]:
        return [self.process_query(), self.utilization_query()]

    def process_query(self) -> Query:
        """The compute processes, newest struct version first."""
        return Query(
            "compute processes",
            tuple(
                Variant(name, partial(getattr(pynvml, name), self.handle), self.emit_processes)
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

    def emit_processes(self, b: BatchBuilder, processes: list[Any]) -> None:
        job = self.job.pids
        e = self.entity
        job_memory = 0
        job_count = 0
        seen: dict[int, bool] = {}
        for proc in processes:
            pid = proc.pid
            in_job = pid in job
            memory = proc.usedGpuMemory  # None where the driver cannot tell (WDDM)
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

    def fetch_utilization(self) -> list[Any]:
        """Samples newer than the last seen; none new is an answer, not an error."""
        try:
            return pynvml.nvmlDeviceGetProcessUtilization(self.handle, self.last_seen_us)
        except pynvml.NVMLError_NotFound:
            return []

    def emit_utilization(self, b: BatchBuilder, samples: list[Any]) -> None:
        if not samples:
            return
        latest: dict[int, Any] = {}
        newest = self.last_seen_us
        for s in samples:
            ts = s.timeStamp
            if ts > newest:
                newest = ts
            kept = latest.get(s.pid)
            if kept is None or ts >= kept.timeStamp:
                latest[s.pid] = s
        self.last_seen_us = newest
        e = self.entity
        for pid, s in latest.items():
            entity = f"{e}/pid{pid}"
            b.add(entity, "gpu.process.sm_utilization", s.smUtil / 100.0)
            b.add(entity, "gpu.process.memory_utilization", s.memUtil / 100.0)
