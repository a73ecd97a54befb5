"""OTLP over gRPC or HTTP/protobuf, configured by the standard ``OTEL_*`` variables.

The SDK exporters read endpoint, headers, timeout, compression, insecure and certificates from
the environment themselves; this module picks the protocol, validates every value before the job
starts (:func:`otlp_settings`) and, for an endpoint given on the command line, turns it into what
each exporter expects. A collector that is down or slow costs one bounded export attempt (it
never outlasts the interval), then attempts back off exponentially (two, four ... intervals, at
most :data:`MAX_BACKOFF_INTERVALS` of them and :data:`MAX_BACKOFF_S`): between attempts nothing
is collected or encoded, and the points that did not go out are counted
(``otlp.dropped_points``). Nothing is queued: metrics are cumulative, so the next attempt's
collection carries everything (the one pending batch is the latest state); log records wait
in the SDK's bounded batch queue. Sampling never waits on any of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from agent.errors import UsageError

GRPC = "grpc"
HTTP = "http/protobuf"
PROTOCOLS = (GRPC, HTTP)
#: At most one ``export_failed`` event per this many seconds (the count is always exact).
DEFAULT_EVENT_GAP_S = 60.0
#: ``OTEL_METRIC_EXPORT_INTERVAL`` when unset (the SDK's default).
DEFAULT_INTERVAL_MS = 60_000.0
#: ``OTEL_EXPORTER_OTLP_TIMEOUT`` when unset (seconds, the SDK's default).
DEFAULT_TIMEOUT_S = 10.0
#: An export attempt is bounded by the interval, but never below this (connection setup).
MIN_ATTEMPT_S = 1.0
#: The final export at shutdown waits at most this long, metrics and logs together.
SHUTDOWN_BUDGET_S = 2.0
#: The same while exports are failing (a collector that is down): one try, no retry waits.
FAILING_SHUTDOWN_BUDGET_S = 0.3
#: While exports fail, an attempt waits at most this many intervals after the last one ...
MAX_BACKOFF_INTERVALS = 8
#: ... and at most this long (unless the interval itself is longer).
MAX_BACKOFF_S = 300.0
_NETLOC = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(:[0-9]{1,5})?$")

Note = Callable[..., None]


def _env(name: str, signal: str, environ: Mapping[str, str]) -> str | None:
    return environ.get(f"OTEL_EXPORTER_OTLP_{signal}_{name}") or environ.get(
        f"OTEL_EXPORTER_OTLP_{name}"
    )


def choose_protocol(
    endpoint: str | None, signal: str = "METRICS", environ: Mapping[str, str] | None = None
) -> str:
    """``OTEL_EXPORTER_OTLP_[signal_]PROTOCOL`` if set, else a guess from the endpoint.

    An endpoint on port 4318 or with a ``/v1/`` path is HTTP; anything else is gRPC (port 4317).
    """
    environ = os.environ if environ is None else environ
    chosen = _env("PROTOCOL", signal, environ)
    if chosen:
        chosen = chosen.strip().lower()
        if chosen == "http/json":
            raise UsageError("OTLP http/json is not supported; use grpc or http/protobuf")
        if chosen not in PROTOCOLS:
            raise UsageError(f"unknown OTLP protocol {chosen!r}; use grpc or http/protobuf")
        return chosen
    target = endpoint or _env("ENDPOINT", signal, environ) or ""
    parsed = urlparse(target if "://" in target else f"//{target}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if port == 4318 or "/v1/" in f"{parsed.path}/":
        return HTTP
    return GRPC


def signal_endpoint(endpoint: str, protocol: str, path: str) -> str:
    """A command-line endpoint as the exporter wants it (no scheme means plaintext ``http://``).

    HTTP exporters take the full signal URL: ``/v1/metrics`` or ``/v1/logs`` is appended to a
    base URL, and swapped when the URL names the other signal.
    """
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    if protocol == GRPC:
        return url
    parsed = urlparse(url)
    base = parsed.path.rstrip("/")
    for known in ("/v1/metrics", "/v1/logs"):
        if base.endswith(known):
            base = base[: -len(known)]
    return parsed._replace(path=f"{base}/{path}").geturl()


def check_endpoint(endpoint: str, what: str) -> str:
    """``endpoint`` as a URL if it is ``http(s)://host[:port][/path]`` (or ``host:port``), else a
    one-line :class:`UsageError` naming ``what`` it came from."""
    text = endpoint.strip()
    url = text if "://" in text else f"http://{text}"
    parsed = urlparse(url)
    netloc = _NETLOC.match(parsed.netloc.rpartition("@")[2])
    if parsed.scheme not in ("http", "https"):
        problem = "the scheme must be http:// or https://"
    elif any(c.isspace() for c in text) or netloc is None:
        problem = "not a host[:port]"
    elif netloc.group(2) and not 0 < int(netloc.group(2)[1:]) <= 65535:
        problem = "the port must be 1-65535"
    else:
        return url
    raise UsageError(f"{what} {endpoint!r}: {problem} (e.g. http://127.0.0.1:4317)")


def _positive(environ: Mapping[str, str], key: str, default: float) -> float:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{key} must be a number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{key} must be a positive number, got {raw!r}")
    return value


@dataclass(frozen=True)
class OtlpSettings:
    """The validated OTLP configuration: what ``--otlp`` and ``OTEL_*`` say, decided before start."""

    #: The command-line endpoint, or None to leave it to ``OTEL_EXPORTER_OTLP_*``.
    endpoint: str | None
    metrics_protocol: str
    logs_protocol: str
    #: The endpoint metrics really go to, for events and the header.
    shown: str
    interval_ms: float
    #: One export attempt (with the SDK's retries) lasts at most the interval (at least 1 s).
    attempt_timeout_s: float

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of :attr:`shown`, for the connectivity diagnosis."""
        parsed = urlparse(self.shown)
        default = 4317 if self.metrics_protocol == GRPC else 4318
        return parsed.hostname or "localhost", parsed.port or default


def otlp_settings(endpoint: str | None, environ: Mapping[str, str] | None = None) -> OtlpSettings:
    """Validate ``--otlp`` and every ``OTEL_*`` value the export reads; one-line UsageErrors."""
    environ = os.environ if environ is None else environ
    if endpoint is not None:
        check_endpoint(endpoint, "--otlp")
    for signal in ("METRICS", "LOGS"):
        for key in (f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            if environ.get(key):
                check_endpoint(environ[key], key)
        for key in (f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
            _positive(environ, key, DEFAULT_TIMEOUT_S)
    metrics_protocol = choose_protocol(endpoint, "METRICS", environ)
    logs_protocol = choose_protocol(endpoint, "LOGS", environ)
    interval_ms = _positive(environ, "OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_INTERVAL_MS)
    _positive(environ, "OTEL_METRIC_EXPORT_TIMEOUT", 30_000.0)
    timeout_key = (
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"
        if environ.get("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT")
        else "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    timeout_s = _positive(environ, timeout_key, DEFAULT_TIMEOUT_S)
    if endpoint:
        shown = signal_endpoint(endpoint, metrics_protocol, "v1/metrics")
    else:
        configured = _env("ENDPOINT", "METRICS", environ)
        default = "http://localhost:4317" if metrics_protocol == GRPC else "http://localhost:4318"
        shown = signal_endpoint(configured or default, metrics_protocol, "v1/metrics")
        if configured and environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
            shown = configured  # a signal endpoint is used as is
    return OtlpSettings(
        endpoint=endpoint,
        metrics_protocol=metrics_protocol,
        logs_protocol=logs_protocol,
        shown=shown,
        interval_ms=interval_ms,
        attempt_timeout_s=min(timeout_s, max(interval_ms / 1000.0, MIN_ATTEMPT_S)),
    )


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


def metric_exporter(
    endpoint: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    timeout_s: float | None = None,
) -> MetricExporter:
    """The SDK's OTLP metric exporter; ``endpoint=None`` leaves everything to ``OTEL_*``."""
    protocol = choose_protocol(endpoint, "METRICS", environ)
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
    if endpoint is None:
        return OTLPMetricExporter(timeout=timeout_s)
    return OTLPMetricExporter(
        endpoint=signal_endpoint(endpoint, protocol, "v1/metrics"), timeout=timeout_s
    )


def log_exporter(
    endpoint: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    timeout_s: float | None = None,
) -> LogRecordExporter:
    """The SDK's OTLP log exporter, chosen like :func:`metric_exporter`."""
    protocol = choose_protocol(endpoint, "LOGS", environ)
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # type: ignore[assignment]
            OTLPLogExporter,
        )
    if endpoint is None:
        return OTLPLogExporter(timeout=timeout_s)
    return OTLPLogExporter(
        endpoint=signal_endpoint(endpoint, protocol, "v1/logs"), timeout=timeout_s
    )


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


def count_points(metrics_data: MetricsData | None) -> int:
    """Data points in one collection (what an export would send)."""
    if metrics_data is None:
        return 0
    return sum(
        len(metric.data.data_points)
        for resource in metrics_data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    )


class CountingMetricExporter(MetricExporter):
    """Delegates to the SDK exporter and reports every result to :class:`ExportHealth`."""

    def __init__(self, inner: MetricExporter, health: ExportHealth) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self._health = health
        #: Points in the last export attempted: what a skipped collection would have held.
        self.last_points = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        points = count_points(metrics_data)
        if not self._health.due():  # backing off (the reader skips earlier): not sent, counted
            self._health.skipped(points)
            return MetricExportResult.FAILURE
        self.last_points = points
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:  # an exporter bug counts as a failed export, never a crash
            self._health.record("metrics", False, f"{type(exc).__name__}: {exc}", points)
            return MetricExportResult.FAILURE
        ok = result is MetricExportResult.SUCCESS
        self._health.record("metrics", ok, points=0 if ok else points)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.abort()

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
