"""The sampling loop: drift-corrected ticks, collectors isolated from each other."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.model import Batch, BatchBuilder, Event
from agent.snapshot import SnapshotHub
from agent.source import Collector

TickSink = Callable[[float, list[Batch]], None]


@dataclass
class SamplerStats:
    ticks: int = 0
    missed_ticks: int = 0
    samples: int = 0
    disabled: dict[str, str] = field(default_factory=dict)
    collect_seconds: float = 0.0
    #: CPU seconds the sampling thread spent in ticks (collect + sinks + publish); the budget
    #: that consumers such as live analysis measure themselves against.
    cpu_seconds: float = 0.0


class Sampler:
    """Calls every collector once per tick and hands the batches to the sinks.

    Ticks are scheduled at ``t0 + k * interval`` so they do not drift; a tick that would
    start late is skipped and counted. A collector that raises is disabled with an
    ``collector_disabled`` warning event; the others go on.
    """

    def __init__(
        self,
        collectors: Sequence[Collector],
        interval: float,
        *,
        hub: SnapshotHub | None = None,
        sinks: Sequence[TickSink] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.collectors = list(collectors)
        self.interval = interval
        self.hub = hub or SnapshotHub()
        self.sinks = list(sinks)
        self.clock = clock
        self.stats = SamplerStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_events: list[Event] = []
        self._lock = threading.Lock()

    def note(self, kind: str, entity: str, **detail) -> None:
        """Queue an agent event (warnings, export failures) for the next tick's batch."""
        with self._lock:
            self._pending_events.append(Event(self.clock(), kind, entity, detail))

    def step(self, now: float | None = None) -> list[Batch]:
        """Run one tick at ``now`` (tests drive simulated time through this)."""
        now = self.clock() if now is None else now
        started = time.perf_counter()
        cpu_started = time.thread_time()
        batches: list[Batch] = []
        for collector in list(self.collectors):
            try:
                batches.append(collector.collect(now))
            except Exception as exc:  # isolate: disable this one, keep the rest
                self._disable(collector, exc, now)
        with self._lock:
            pending, self._pending_events = self._pending_events, []
        if pending:
            agent = BatchBuilder("agent", now)
            for ev in pending:
                agent.event(ev.kind, ev.entity, ts=ev.ts, **ev.detail)
            batches.append(agent.build())
        self.stats.ticks += 1
        self.stats.samples += sum(len(b) for b in batches)
        self.stats.collect_seconds += time.perf_counter() - started
        for sink in self.sinks:
            sink(now, batches)
        self.hub.publish(now, batches, self.stats_view())
        self.stats.cpu_seconds += time.thread_time() - cpu_started
        return batches

    def stats_view(self) -> dict:
        return {
            "ticks": self.stats.ticks,
            "missed_ticks": self.stats.missed_ticks,
            "samples": self.stats.samples,
            "cpu_seconds": round(self.stats.cpu_seconds, 6),
            "disabled": dict(self.stats.disabled),
        }

    def _disable(self, collector: Collector, exc: Exception, now: float) -> None:
        self.collectors.remove(collector)
        reason = f"{type(exc).__name__}: {exc}"
        self.stats.disabled[collector.source] = reason
        self.note("collector_disabled", collector.source, reason=reason, severity="warning")
        with contextlib.suppress(Exception):
            collector.close()

    # -- background loop
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="accelwatch-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        t0 = time.monotonic()
        k = 0
        while not self._stop.is_set():
            self.step()
            k += 1
            next_at = t0 + k * self.interval
            now = time.monotonic()
            if now > next_at:  # fell behind: skip the ticks we cannot make
                skipped = int((now - next_at) // self.interval) + 1
                self.stats.missed_ticks += skipped
                k += skipped
                next_at = t0 + k * self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
