"""GPU collector over NVML (nvidia-ml-py): every GPU, its links, health, and the job's share.

``start`` initializes NVML once, probes every query on every device (see
:mod:`collectors.nvml_probe`) and starts the XID event watcher; ``collect`` then only runs
the bound queries. A query that fails during a tick is recorded as an ``nvml_error`` event
(rate-limited) and the tick goes on; a GPU that falls off the bus (``GPU_IS_LOST``) gets a
``gpu_lost`` event and is not queried again while the others continue.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pynvml

from agent.errors import CollectorUnavailable
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector
from collectors.nvml_device import Device, probe_gpu, probe_mig_devices, text
from collectors.nvml_events import EventWatcher
from collectors.nvml_probe import Notice
from collectors.nvml_processes import JobView

SOURCE = "nvml"
ERROR_EVENT_INTERVAL_S = 60.0  # at most one nvml_error event per device and query per minute
#: How long the XID thread's ``nvmlEventSetWait`` blocks when no event comes. An event ends the
#: wait at once whatever this is; it only sets how often the idle thread wakes (its CPU: 0.037 %
#: of a core at 500 ms on the simulated driver, 0.018 % at 1 s) and how long ``close`` may wait
#: for the last wait to return (NVML cannot interrupt one).
EVENT_WAIT_MS = 1000


def unavailable_message(exc: pynvml.NVMLError) -> str:
    """Why NVML cannot be used here, and what to do instead, in one line."""
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return (
            "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver on this machine; "
            "use --simulate SCENARIO to record simulated GPUs"
        )
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return "NVIDIA driver not loaded (is the kernel module installed?)"
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return "no permission to use NVML (device files /dev/nvidia* not accessible)"
    return f"NVML cannot be initialized: {exc}"


class NvmlCollector(Collector):
    """Per-GPU utilization, memory, power, clocks, links, GPM, health and job processes.

    ``clock`` stamps XID events (tests pass the simulated clock); ``watch_events=False``
    skips the event thread.
    """

    source = SOURCE

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        watch_events: bool = True,
        event_timeout_ms: int = EVENT_WAIT_MS,
    ) -> None:
        self.clock = clock
        self.watch_events = watch_events
        self.event_timeout_ms = event_timeout_ms
        self.devices: list[Device] = []
        self.job = JobView()
        self.job_pids: Callable[[], frozenset[int]] = frozenset
        self.events: EventWatcher | None = None
        self.xid_counts: dict[str, int] = {}
        self._event_errors = 0
        self._pending: list[tuple[str, str, dict[str, Any]]] = []  # (kind, entity, detail)
        self._error_last: dict[tuple[str, str], float] = {}
        self._initialized = False

    # -- start / close --------------------------------------------------------------------------
    def start(self, ctx: CollectContext) -> None:
        if self._initialized:
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise CollectorUnavailable(unavailable_message(exc)) from None
        self._initialized = True
        self.job_pids = ctx.job_pids
        try:
            self._discover()
        except pynvml.NVMLError as exc:  # e.g. a driver/library mismatch listing the GPUs
            self.close()
            raise CollectorUnavailable(f"NVML cannot list the GPUs: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _discover(self) -> None:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise CollectorUnavailable("NVML is loaded but reports no GPUs")
        system = {"driver_version": _system(pynvml.nvmlSystemGetDriverVersion)}
        notices: list[Notice] = []
        for index in range(count):
            entity = f"gpu{index}"
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                device, found = probe_gpu(handle, index, self.job)
                device.children, mig_notices = probe_mig_devices(device, self.job)
            except pynvml.NVMLError_GpuIsLost:
                self._pending.append(
                    (
                        "gpu_lost",
                        entity,
                        {
                            "severity": "error",
                            "message": f"{entity} fell off the bus before recording",
                        },
                    )
                )
                continue
            except pynvml.NVMLError as exc:
                self._pending.append(
                    (
                        "notice",
                        entity,
                        {
                            "reason": str(exc),
                            "message": f"{entity} cannot be read ({exc}); skipped",
                        },
                    )
                )
                continue
            device.attrs.update(system)
            self.devices.append(device)
            notices += found + mig_notices
        self._pending += [("notice", n.entity, n.detail) for n in notices]
        self.xid_counts = {d.entity: 0 for d in self.devices}
        if self.watch_events and self.devices:
            self.events = EventWatcher(
                [(d.entity, d.handle) for d in self.devices],
                clock=self.clock,
                timeout_ms=self.event_timeout_ms,
            )
            self._pending += [("notice", n.entity, n.detail) for n in self.events.start()]

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
        for device in self.devices:
            device.close()
        self.devices = []
        if self._initialized:
            self._initialized = False
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()

    # -- the tick -------------------------------------------------------------------------------
    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        self.job.pids = self.job_pids()
        if self._pending:
            for kind, entity, detail in self._pending:
                b.event(kind, entity, **detail)
            self._pending = []
        for device in self.devices:
            if device.lost:
                continue
            self._read(b, device, device)
            for child in device.children:
                if not device.lost:
                    self._read(b, child, device)
            if not device.lost:
                device.note_job_use()
                device.describe_if_changed(b)
        self._record_events(b)
        return b.build()

    def _read(self, b: BatchBuilder, device: Device, gpu: Device) -> None:
        """Run a device's bound queries; errors are data, a lost GPU stops its queries."""
        for name, fetch, emit, _ in device.queries:
            try:
                emit(b, fetch())
            except pynvml.NVMLError_GpuIsLost:
                self._lose(b, gpu, device.entity, name)
                return
            except pynvml.NVMLError as exc:
                self._query_error(b, device.entity, name, str(exc))

    def _lose(self, b: BatchBuilder, gpu: Device, entity: str, query: str) -> None:
        gpu.lost = True
        b.event(
            "gpu_lost",
            gpu.entity,
            severity="error",
            query=query,
            message=f"{gpu.entity} is lost (fell off the bus) while reading {query} of "
            f"{entity}; no longer queried",
        )
        b.describe(gpu.entity, **{**gpu.attrs, "used_by_job": gpu.used_by_job, "lost": True})

    def _query_error(self, b: BatchBuilder, entity: str, query: str, error: str) -> None:
        key = (entity, query)
        last = self._error_last.get(key)
        if last is not None and b.ts - last < ERROR_EVENT_INTERVAL_S:
            return
        self._error_last[key] = b.ts
        b.event(
            "nvml_error",
            entity,
            severity="warning",
            query=query,
            error=error,
            message=f"{query} of {entity} failed: {error}",
        )

    def _record_events(self, b: BatchBuilder) -> None:
        if self.events is None:
            fresh = []
        else:
            fresh = self.events.drain()
            if self.events.errors > self._event_errors:  # the wait itself failed
                self._event_errors = self.events.errors
                self._query_error(b, "nvml", "events", self.events.last_error)
        counts = self.xid_counts
        bumped: set[str] = set()
        for ev in fresh:
            detail = ev.detail
            if ev.kind == "xid":
                if ev.entity in counts:
                    counts[ev.entity] += 1
                    bumped.add(ev.entity)
                detail = {
                    **detail,
                    "severity": "error",
                    "message": f"XID {detail['xid']} on {ev.entity}",
                }
            b.event(ev.kind, ev.entity, ts=ev.ts, **detail)
        for device in self.devices:
            if device.entity in bumped:
                device.reread_static()
            if not device.lost or device.entity in bumped:
                b.add(device.entity, "gpu.xid", counts[device.entity])


def _system(fetch: Callable[[], Any]) -> str | None:
    try:
        return text(fetch())
    except pynvml.NVMLError:
        return None
