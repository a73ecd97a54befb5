"""XID and ECC events from an NVML event set, waited on by a small background thread.

``nvmlEventSetWait`` blocks, so it must never run on the sampler thread. The watcher waits
with a timeout (so ``close`` returns within it), stamps each event with the agent's
clock and queues it; the collector drains the queue into the next batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pynvml

from collectors.nvml_probe import Notice

#: Event types recorded, if the device supports them.
WATCHED_EVENTS = (
    pynvml.nvmlEventTypeXidCriticalError
    | pynvml.nvmlEventTypeDoubleBitEccError
    | pynvml.nvmlEventTypeSingleBitEccError
)
_ERROR_BACKOFF_S = 1.0


@dataclass(frozen=True, slots=True)
class GpuEvent:
    ts: float
    entity: str
    kind: str  # "xid" or "ecc"
    detail: dict[str, Any]


def handle_key(handle: Any) -> int | None:
    """A hashable identity for a device handle (the pointer value)."""
    return ctypes.cast(handle, ctypes.c_void_p).value


class EventWatcher:
    """Registers devices on one event set and waits for events on a daemon thread."""

    def __init__(
        self,
        devices: Sequence[tuple[str, Any]],
        *,
        clock: Callable[[], float] = time.time,
        timeout_ms: int = 250,
    ) -> None:
        self.devices = list(devices)
        self.clock = clock
        self.timeout_ms = timeout_ms
        self.entities: dict[int | None, str] = {handle_key(h): e for e, h in self.devices}
        self.queue: deque[GpuEvent] = deque()
        self.errors = 0
        self.last_error = ""
        self._event_set: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> list[Notice]:
        """Register what each device supports; start the thread if any device registered."""
        notices: list[Notice] = []
        try:
            self._event_set = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            return [
                Notice(
                    "nvml",
                    {
                        "query": "events",
                        "reason": str(exc),
                        "message": f"XID events unavailable: {exc}",
                    },
                )
            ]
        registered = 0
        for entity, handle in self.devices:
            try:
                wanted = pynvml.nvmlDeviceGetSupportedEventTypes(handle) & WATCHED_EVENTS
                if not wanted & pynvml.nvmlEventTypeXidCriticalError:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
                pynvml.nvmlDeviceRegisterEvents(handle, wanted, self._event_set)
                registered += 1
            except pynvml.NVMLError as exc:
                notices.append(
                    Notice(
                        entity,
                        {
                            "query": "events",
                            "reason": str(exc),
                            "message": f"XID events {str(exc).lower()} on {entity}; not recorded",
                        },
                    )
                )
        if registered:
            self._thread = threading.Thread(
                target=self._run, name="accelwatch-nvml-events", daemon=True
            )
            self._thread.start()
        return notices

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = pynvml.nvmlEventSetWait_v2(self._event_set, self.timeout_ms)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError as exc:
                self.errors += 1  # reported by the collector; do not spin on a broken event set
                self.last_error = str(exc)
                self._stop.wait(_ERROR_BACKOFF_S)
                continue
            self.queue.append(self._event(data))

    def _event(self, data: pynvml.c_nvmlEventData_t) -> GpuEvent:
        entity = self.entities.get(handle_key(data.device), "nvml")
        detail: dict[str, Any] = {}
        if data.gpuInstanceId != 0xFFFFFFFF:
            detail["gpu_instance_id"] = data.gpuInstanceId
        if data.eventType == pynvml.nvmlEventTypeXidCriticalError:
            return GpuEvent(self.clock(), entity, "xid", {"xid": int(data.eventData), **detail})
        corrected = data.eventType == pynvml.nvmlEventTypeSingleBitEccError
        return GpuEvent(
            self.clock(),
            entity,
            "ecc",
            {
                "type": "corrected" if corrected else "uncorrected",
                **detail,
                "severity": "warning" if corrected else "error",
            },
        )

    def drain(self) -> list[GpuEvent]:
        """Events received since the last drain, oldest first (thread-safe with the waiter)."""
        out = []
        queue = self.queue
        while queue:
            out.append(queue.popleft())
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_ms / 1000.0 + 2.0)
            self._thread = None
        if self._event_set is not None:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlEventSetFree(self._event_set)
            self._event_set = None
