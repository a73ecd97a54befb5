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
    #: Stretches of missed ticks, each noted as a ``gap`` event.
    gaps: int = 0
    #: The latest gap: (start, seconds, missed ticks), for the UI header.
    last_gap: tuple[float, float, int] | None = None
    samples: int = 0
    disabled: dict[str, str] = field(default_factory=dict)
    collect_seconds: float = 0.0
    #: CPU seconds the sampling thread spent in ticks (collect + sinks + publish); the budget
    #: that consumers such as live analysis measure themselves against.
    cpu_seconds: float = 0.0


class Sampler:
    """Calls every collector once per tick and hands the batches to the sinks.

    Ticks are scheduled at ``t0 + k * interval`` so they do not drift; a tick that would
    start late is skipped and counted, and each stretch of skipped ticks is a ``gap`` event. A collector that raises is disabled with an
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
            "gaps": self.stats.gaps,
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
        last_wall: float | None = None
        while not self._stop.is_set():
            k = self._reschedule(t0, k, time.monotonic(), last_wall)
            last_wall = self.clock()
            self.step(last_wall)
            k += 1
            self._stop.wait(max(0.0, t0 + k * self.interval - time.monotonic()))

    def _reschedule(self, t0: float, k: int, now: float, last_tick_wall: float | None) -> int:
        """The schedule slot for a tick taken at monotonic time ``now``, tick ``k`` being due.

        Slots that passed while the agent could not tick (it was stopped, or a tick overran)
        are skipped, counted, and noted as one ``gap`` event — ``start``: when the first
        missed tick was due (wall clock), ``seconds``: the span of missed ticks,
        ``missed_ticks``, ``late_s`` — so the report and the UI can show the hole."""
        late = now - (t0 + k * self.interval)
        if late < self.interval:
            return k
        skipped = int(late // self.interval)
        self.stats.missed_ticks += skipped
        self.stats.gaps += 1
        start = (self.clock() - late) if last_tick_wall is None else last_tick_wall + self.interval
        self.stats.last_gap = (start, skipped * self.interval, skipped)
        self.note(
            "gap",
            "agent",
            start=round(start, 6),
            seconds=round(skipped * self.interval, 6),
            missed_ticks=skipped,
            late_s=round(late, 6),
        )
        return k + skipped

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
