"""OTLP over gRPC or HTTP/protobuf, configured by the standard ``OTEL_*`` variables.

The SDK exporters read endpoint, headers, timeout, compression, insecure and certificates from
the environment themselves; this module picks the protocol, validates every value before the job
starts (:func:`otlp_settings`) and, for an endpoint given on the command line, turns it into what
each exporter expects. Metrics are encoded by :mod:`exporters.otlp_request` and sent on the SDK
exporters' connections by :mod:`exporters.otlp_metrics`; failures, backoff and their counters
live in :mod:`exporters.otlp_health`. Sampling never waits on any of it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from opentelemetry.sdk._logs.export import LogRecordExporter

from agent.errors import UsageError
from exporters.otlp_channel import ChannelPerExport

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


def log_exporter(
    endpoint: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    timeout_s: float | None = None,
) -> LogRecordExporter:
    """The SDK's OTLP log exporter, chosen like :func:`metric_exporter`."""
    protocol = choose_protocol(endpoint, "LOGS", environ)
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
            OTLPLogExporter as GrpcLogExporter,
        )

        class OTLPLogExporter(ChannelPerExport, GrpcLogExporter):
            """The SDK's gRPC log exporter, with a channel only while it exports."""

            def export(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
                return self._on_a_channel(super().export, batch, *args, **kwargs)

    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # type: ignore[assignment]
            OTLPLogExporter,
        )
    if endpoint is None:
        return OTLPLogExporter(timeout=timeout_s)
    return OTLPLogExporter(
        endpoint=signal_endpoint(endpoint, protocol, "v1/logs"), timeout=timeout_s
    )
