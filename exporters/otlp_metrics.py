"""OTLP metrics without the SDK's metrics pipeline: a request built from the latest tick every
interval, sent on the SDK exporter's own connection.

The SDK's OTLP exporters stay what they are for configuration and transport (``OTEL_*``
endpoint, headers, TLS, compression, timeout, retries, the gRPC channel or HTTP session); the
subclasses here only hand them a request already encoded by
:class:`exporters.otlp_request.RequestBuilder` instead of SDK ``MetricsData``. The
:class:`MetricsTicker` thread replaces the SDK's periodic reader: every interval, unless the
export health is backing off, it builds one request and sends it; one export runs at a time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import ObservableCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExportResult

from exporters.otlp import GRPC, choose_protocol, signal_endpoint
from exporters.otlp_channel import ChannelPerExport, RawMetricsStub
from exporters.otlp_health import CountingMetricExporter, ExportHealth
from exporters.otlp_request import CUMULATIVE, DELTA, EncodedRequest, request_points

#: What the exporters send: the encoded bytes (the ticker's) or a request object (tests').
Request = EncodedRequest | ExportMetricsServiceRequest


def metric_exporter(
    endpoint: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    timeout_s: float | None = None,
) -> Any:
    """The SDK's OTLP metric exporter of the chosen protocol, able to send an encoded request
    (``export_request``); ``endpoint=None`` leaves everything to ``OTEL_*``."""
    protocol = choose_protocol(endpoint, "METRICS", environ)
    cls = _grpc_exporter() if protocol == GRPC else _http_exporter()
    if endpoint is None:
        return cls(timeout=timeout_s)
    return cls(endpoint=signal_endpoint(endpoint, protocol, "v1/metrics"), timeout=timeout_s)


def _grpc_exporter() -> type:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    class GrpcRequestExporter(ChannelPerExport, OTLPMetricExporter):
        """The SDK's gRPC exporter (channel options, metadata, retries) sending our requests
        as the bytes they were encoded to, on a channel open only while it exports."""

        def _initialize_channel_and_stub(self) -> None:
            super()._initialize_channel_and_stub()
            self._client = RawMetricsStub(self._channel)

        def _translate_data(self, data: Any) -> bytes:  # type: ignore[override]
            if isinstance(data, EncodedRequest):
                return data.payload
            if isinstance(data, ExportMetricsServiceRequest):
                return data.SerializeToString()
            return super()._translate_data(data).SerializeToString()

        def _count_data(self, data: Any) -> int:
            if isinstance(data, EncodedRequest):
                return data.points
            if isinstance(data, ExportMetricsServiceRequest):
                return request_points(data)
            return super()._count_data(data)

        def export_request(self, request: Request) -> MetricExportResult:
            result: MetricExportResult = self._on_a_channel(self._export, data=request)
            return result

    return GrpcRequestExporter


def _http_exporter() -> type:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    class HttpRequestExporter(OTLPMetricExporter):
        """The SDK's HTTP/protobuf exporter (session, headers, compression) sending our requests."""

        def export_request(self, request: Request) -> MetricExportResult:
            if self._shutdown:
                return MetricExportResult.FAILURE
            if isinstance(request, EncodedRequest):
                request = request.parsed()  # the SDK's HTTP path counts points in the objects
            return self._export_batch(request)

    return HttpRequestExporter


def counter_temporality(exporter: Any) -> int:
    """DELTA when the exporter prefers it for observable counters
    (``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta``), else CUMULATIVE."""
    preferred = getattr(exporter, "_preferred_temporality", {}) or {}
    return DELTA if preferred.get(ObservableCounter) is AggregationTemporality.DELTA else CUMULATIVE


class MetricsTicker:
    """Every ``interval_s``: unless backing off, build the request of the latest tick and send it.

    ``build()`` returns ``(request or None, points)``. A skipped interval builds nothing (its
    points are counted from the last attempt); while the endpoint is known down, an attempt
    first tries a TCP connect and stops there if it is refused.
    """

    def __init__(
        self,
        build: Callable[[], tuple[Request | None, int]],
        exporter: CountingMetricExporter,
        health: ExportHealth,
        interval_s: float,
    ) -> None:
        self._build = build
        self._exporter = exporter
        self._health = health
        self._interval = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="accelwatch-otlp", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):  # an export must never end the loop
                self.export_now()

    def export_now(self) -> bool:
        """One export attempt now (the first tick's, the final one); True if it went out."""
        with self._lock:
            last = self._exporter.last_points
            if not self._health.due():
                self._health.skipped(last)
                return False
            if last and self._health.unreachable(last):
                return False  # still down: a TCP connect told, nothing was built
            request, points = self._build()
            if request is None or not points:
                return False
            return self._exporter.export(request, points)

    def shutdown(self, final: bool = True) -> None:
        """Stop the interval thread, then (``final``) one last export of the latest tick."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=0.1)  # an export in flight is bounded by its timeout
        if final:
            self.export_now()
