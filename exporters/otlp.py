"""OTLP over gRPC or HTTP/protobuf, configured by the standard ``OTEL_*`` variables.

The SDK exporters read endpoint, headers, timeout, compression, insecure and certificates from
the environment themselves; this module only picks the protocol and, for an endpoint given on
the command line, turns it into what each exporter expects. A collector that is down or slow
costs one bounded export attempt per interval (the exporter's timeout): cumulative metrics are
not queued, log records wait in a bounded batch queue, and sampling never waits on either.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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


def metric_exporter(
    endpoint: str | None, environ: Mapping[str, str] | None = None
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
        return OTLPMetricExporter()
    return OTLPMetricExporter(endpoint=signal_endpoint(endpoint, protocol, "v1/metrics"))


def log_exporter(
    endpoint: str | None, environ: Mapping[str, str] | None = None
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
        return OTLPLogExporter()
    return OTLPLogExporter(endpoint=signal_endpoint(endpoint, protocol, "v1/logs"))


class ExportHealth:
    """Counts OTLP export results into the live context's health counters and notes rate-limited events."""

    def __init__(
        self,
        health: dict[str, Any],
        note: Note,
        endpoint: str,
        event_gap_s: float = DEFAULT_EVENT_GAP_S,
    ) -> None:
        self._health = health
        self._note = note
        self._endpoint = endpoint
        self._event_gap = event_gap_s
        self._lock = threading.Lock()
        self._last_event = float("-inf")
        self._suppressed = 0
        self._failing = False
        health.setdefault("otlp.failed_exports", 0)
        health.setdefault("otlp.exports", 0)

    def record(self, signal: str, ok: bool, error: str = "") -> None:
        with self._lock:
            if ok:
                self._health["otlp.exports"] = int(self._health.get("otlp.exports", 0)) + 1
                if self._failing:
                    self._failing = False
                    self._note("export_recovered", "otlp", signal=signal, endpoint=self._endpoint)
                return
            failed = int(self._health.get("otlp.failed_exports", 0)) + 1
            self._health["otlp.failed_exports"] = failed
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
            failed_exports=failed,
            suppressed=suppressed,
            severity="warning",
            **detail,
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

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:  # an exporter bug counts as a failed export, never a crash
            self._health.record("metrics", False, f"{type(exc).__name__}: {exc}")
            return MetricExportResult.FAILURE
        self._health.record("metrics", result is MetricExportResult.SUCCESS)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


class CountingLogExporter(LogRecordExporter):
    """Delegates to the SDK log exporter and reports every result to :class:`ExportHealth`."""

    def __init__(self, inner: LogRecordExporter, health: ExportHealth) -> None:
        self.inner = inner
        self._health = health

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            result = self.inner.export(batch)
        except Exception as exc:
            self._health.record("logs", False, f"{type(exc).__name__}: {exc}")
            return LogRecordExportResult.FAILURE
        self._health.record("logs", result is LogRecordExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)
