"""How OTLP exports fare: results counted into the export health, failures told in words (rate
limited), and the backoff while a collector is down.

A collector that is down or slow costs one bounded export attempt (it never outlasts the
interval), then attempts back off exponentially (two, four ... intervals, at most
:data:`~exporters.otlp.MAX_BACKOFF_INTERVALS` of them and :data:`~exporters.otlp.MAX_BACKOFF_S`):
between attempts nothing is collected or encoded, and the points that did not go out are counted
(``otlp.dropped_points``). Nothing is queued: metrics are cumulative, so the next attempt carries
everything (the one pending batch is the latest state); log records wait in the SDK's bounded
batch queue.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult

from exporters.otlp import (
    DEFAULT_EVENT_GAP_S,
    DEFAULT_INTERVAL_MS,
    MAX_BACKOFF_INTERVALS,
    MAX_BACKOFF_S,
)
from exporters.otlp_request import EncodedRequest

Note = Callable[..., None]


def connect_problem(address: tuple[str, int], timeout_s: float = 0.25) -> str | None:
    """Why nothing listens at ``address``, in words, or None when a TCP connect succeeds."""
    host, port = address
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s):
            return None
    except ConnectionRefusedError:
        return f"collector down: {where}"
    except socket.gaierror:
        return f"unknown host: {where}"
    except TimeoutError:
        return f"collector unreachable: {where}"
    except OSError as exc:
        return f"{exc.strerror or exc}: {where}"


def diagnose(address: tuple[str, int], timeout_s: float = 0.25) -> str:
    """Why exports to ``address`` fail, in words: one short TCP connect, only after a failure."""
    problem = connect_problem(address, timeout_s)
    return problem or f"collector rejected the export: {address[0]}:{address[1]}"


class ExportHealth:
    """Counts OTLP export results into the export health board and notes rate-limited events.

    The board (``LiveContext.counters("export")``, this object its only writer) holds
    ``otlp.exports``, ``otlp.failed_exports``, ``otlp.state`` (``ok``/``failing``) and
    ``otlp.error``, the reason in words (``collector down: 127.0.0.1:4317``) that the UI header
    and the headless line show. The first failure is noted at once; later ones at most once per
    ``event_gap_s``.

    It also holds the backoff: after a failure :meth:`due` is False for one interval, then
    two, four ... (capped); ``otlp.skipped_exports`` counts the intervals skipped,
    ``otlp.dropped_points`` the points (and log records) of failed and skipped exports,
    ``otlp.retry_in_s`` the current wait.
    """

    def __init__(
        self,
        health: dict[str, Any],
        note: Note,
        endpoint: str,
        event_gap_s: float = DEFAULT_EVENT_GAP_S,
        address: tuple[str, int] | None = None,
        interval_s: float = DEFAULT_INTERVAL_MS / 1000.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._health = health
        self._clock = clock
        self._interval = interval_s
        self._max_backoff = min(MAX_BACKOFF_INTERVALS * interval_s, max(interval_s, MAX_BACKOFF_S))
        self._backoff = 0.0
        self._retry_at = float("-inf")
        self._note = note
        self._endpoint = endpoint
        self._address = address
        self._event_gap = event_gap_s
        self._lock = threading.Lock()
        self._last_event = float("-inf")
        self._suppressed = 0
        self._failing = False
        health.setdefault("otlp.failed_exports", 0)
        health.setdefault("otlp.exports", 0)
        health.setdefault("otlp.skipped_exports", 0)
        health.setdefault("otlp.dropped_points", 0)

    def due(self) -> bool:
        """Whether an export may be attempted now (False while backing off after a failure).

        A tenth of an interval early counts as due: the reader's schedule jitters."""
        return self._clock() >= self._retry_at - 0.1 * self._interval

    def retry_now(self) -> None:
        """Let the next export be attempted whatever the backoff (the final one at shutdown)."""
        with self._lock:
            self._retry_at = float("-inf")

    def skipped(self, points: int) -> None:
        """An export not attempted while backing off: counted, with the points it held."""
        with self._lock:
            self._health["otlp.skipped_exports"] = int(self._health["otlp.skipped_exports"]) + 1
            self._health["otlp.dropped_points"] = int(self._health["otlp.dropped_points"]) + points

    def unreachable(self, points: int) -> bool:
        """While failing, before anything is collected: if nothing accepts a TCP connection at
        the endpoint, this attempt fails at once (counted, backing off further), and no batch is
        built or encoded for it. A collector that is up, or that rejects exports, still gets
        the full attempt."""
        if not self._failing or self._address is None:
            return False
        problem = connect_problem(self._address)
        if problem is None:
            return False
        self.record("metrics", False, points=points, reason=problem)
        return True

    def record(
        self, signal: str, ok: bool, error: str = "", points: int = 0, reason: str | None = None
    ) -> None:
        if reason is None:
            reason = "" if ok else self._reason(error)
        with self._lock:
            if ok:
                self._health["otlp.exports"] = int(self._health.get("otlp.exports", 0)) + 1
                self._backoff, self._retry_at = 0.0, float("-inf")
                self._health.pop("otlp.retry_in_s", None)
                if self._failing:
                    self._failing = False
                    self._health["otlp.state"] = "ok"
                    self._health.pop("otlp.error", None)
                    self._note("export_recovered", "otlp", signal=signal, endpoint=self._endpoint)
                return
            failed = int(self._health.get("otlp.failed_exports", 0)) + 1
            self._health["otlp.failed_exports"] = failed
            self._health["otlp.dropped_points"] = int(self._health["otlp.dropped_points"]) + points
            self._backoff = min(self._max_backoff, max(self._interval, 2 * self._backoff))
            self._retry_at = self._clock() + self._backoff
            self._health["otlp.retry_in_s"] = round(self._backoff, 3)
            self._health["otlp.state"] = "failing"
            self._health["otlp.error"] = reason
            self._failing = True
            now = time.monotonic()
            if now - self._last_event < self._event_gap:
                self._suppressed += 1
                return
            self._last_event = now
            suppressed, self._suppressed = self._suppressed, 0
        detail = {"error": error} if error else {}
        self._note(
            "export_failed",
            "otlp",
            signal=signal,
            endpoint=self._endpoint,
            reason=reason,
            failed_exports=failed,
            suppressed=suppressed,
            severity="warning",
            **detail,
        )

    @property
    def failing(self) -> bool:
        """The last export (or the start probe) failed."""
        return self._failing

    def probe(self) -> None:
        """At start: if nothing listens at the endpoint, say so now, before the SDK's first
        attempt has run through its retries (seconds later). Counts no export."""
        if self._address is None:
            return
        problem = connect_problem(self._address)
        if problem is None:
            return
        with self._lock:
            if self._failing or self._health.get("otlp.exports"):
                return  # an export already told
            self._failing = True
            self._health["otlp.state"] = "failing"
            self._health["otlp.error"] = problem
            self._last_event = time.monotonic()
        self._note(
            "export_failed",
            "otlp",
            signal="metrics",
            endpoint=self._endpoint,
            reason=problem,
            failed_exports=int(self._health.get("otlp.failed_exports", 0)),
            suppressed=0,
            severity="warning",
        )

    def _reason(self, error: str) -> str:
        if self._address is not None:
            return diagnose(self._address)
        return error or f"export failed: {self._endpoint}"


class RequestExporter(Protocol):
    """Sends one encoded metrics request (the SDK exporters' transport, exporters.otlp_metrics)."""

    def export_request(
        self, request: ExportMetricsServiceRequest | EncodedRequest
    ) -> MetricExportResult: ...

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None: ...


class CountingMetricExporter:
    """Sends requests through ``inner`` and reports every result to :class:`ExportHealth`;
    while backing off, a request is not sent, only counted."""

    def __init__(self, inner: RequestExporter, health: ExportHealth) -> None:
        self.inner = inner
        self._health = health
        #: Points in the last export attempted: what a skipped collection would have held.
        self.last_points = 0

    def export(self, request: ExportMetricsServiceRequest | EncodedRequest, points: int) -> bool:
        """Send ``request`` (``points`` data points) unless backing off; True if it went out."""
        if not self._health.due():
            self._health.skipped(points)
            return False
        self.last_points = points
        try:
            result = self.inner.export_request(request)
        except Exception as exc:  # an exporter bug counts as a failed export, never a crash
            self._health.record("metrics", False, f"{type(exc).__name__}: {exc}", points)
            return False
        ok = result is MetricExportResult.SUCCESS
        self._health.record("metrics", ok, points=0 if ok else points)
        return ok

    def abort(self) -> None:
        """Close the connection now: an export in flight or waiting to retry gives up."""
        with contextlib.suppress(Exception):
            self.inner.shutdown()


class CountingLogExporter(LogRecordExporter):
    """Delegates to the SDK log exporter and reports every result to :class:`ExportHealth`."""

    def __init__(self, inner: LogRecordExporter, health: ExportHealth) -> None:
        self.inner = inner
        self._health = health

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if not self._health.due():  # the endpoint is down: these records are dropped, counted
            self._health.skipped(len(batch))
            return LogRecordExportResult.FAILURE
        try:
            result = self.inner.export(batch)
        except Exception as exc:
            self._health.record("logs", False, f"{type(exc).__name__}: {exc}", len(batch))
            return LogRecordExportResult.FAILURE
        ok = result is LogRecordExportResult.SUCCESS
        self._health.record("logs", ok, points=0 if ok else len(batch))
        return result

    def shutdown(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Close the connection now: an export in flight or waiting to retry gives up."""
        with contextlib.suppress(Exception):
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)
