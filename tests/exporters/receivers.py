"""OTLP receivers on 127.0.0.1 built from the official opentelemetry-proto service classes.

Each receiver records every decoded request and can be told to misbehave: ``mode`` is
``ok``, ``unavailable`` (gRPC UNAVAILABLE / HTTP 503 with Retry-After) or ``slow`` (answers
after ``delay`` seconds, longer than the exporter's timeout).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


@dataclass
class Recorded:
    """What a receiver saw and how it should answer next."""

    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    logs: list[logs_service_pb2.ExportLogsServiceRequest] = field(default_factory=list)
    refused: int = 0
    #: HTTP request headers, one dict per request (names lowercased).
    headers: list[dict[str, str]] = field(default_factory=list)
    mode: str = "ok"
    delay: float = 3.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer_delay(self) -> float:
        return self.delay if self.mode == "slow" else 0.0


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, recorded: Recorded) -> None:
        self.recorded = recorded

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        return _grpc_answer(
            self.recorded,
            request,
            self.recorded.metrics,
            context,
            metrics_service_pb2.ExportMetricsServiceResponse(),
        )


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, recorded: Recorded) -> None:
        self.recorded = recorded

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        return _grpc_answer(
            self.recorded,
            request,
            self.recorded.logs,
            context,
            logs_service_pb2.ExportLogsServiceResponse(),
        )


def _grpc_answer(recorded: Recorded, request, into: list, context, response):
    if recorded.mode == "unavailable":
        with recorded.lock:
            recorded.refused += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "receiver told to refuse")
    time.sleep(recorded.answer_delay())
    with recorded.lock:
        into.append(request)
    return response


class GrpcReceiver:
    """A gRPC OTLP receiver; ``stop()`` and ``start()`` again keep the same port."""

    def __init__(self) -> None:
        self.recorded = Recorded()
        self.port = 0
        self._server: grpc.Server | None = None

    def start(self) -> GrpcReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self.recorded), server
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(
            _LogsServicer(self.recorded), server
        )
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None


class _HttpHandler(BaseHTTPRequestHandler):
    recorded: Recorded

    def do_POST(self) -> None:  # noqa: N802 - http.server method name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        recorded = self.recorded
        with recorded.lock:
            recorded.headers.append({k.lower(): v for k, v in self.headers.items()})
        if recorded.mode == "unavailable":
            with recorded.lock:
                recorded.refused += 1
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        time.sleep(recorded.answer_delay())
        if self.path == "/v1/metrics":
            request: Any = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
            response: Any = metrics_service_pb2.ExportMetricsServiceResponse()
            target = recorded.metrics
        elif self.path == "/v1/logs":
            request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
            response = logs_service_pb2.ExportLogsServiceResponse()
            target = recorded.logs
        else:
            self.send_error(404)
            return
        with recorded.lock:
            target.append(request)
        payload = response.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


class HttpReceiver:
    """An OTLP/HTTP protobuf receiver at ``/v1/metrics`` and ``/v1/logs``; restartable in place."""

    def __init__(self) -> None:
        self.recorded = Recorded()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HttpReceiver:
        handler = type("Handler", (_HttpHandler,), {"recorded": self.recorded})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# -- decoding --------------------------------------------------------------------------------
def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def attributes(pairs: list[KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


@dataclass(frozen=True)
class Point:
    """One decoded data point with everything a check needs."""

    name: str
    unit: str
    kind: str  # gauge | sum
    monotonic: bool
    attributes: dict[str, Any]
    value: float
    resource: dict[str, Any]
    scope: str


def points(requests: list[metrics_service_pb2.ExportMetricsServiceRequest]) -> list[Point]:
    out = []
    for request in requests:
        for rm in request.resource_metrics:
            resource = attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    monotonic = bool(getattr(data, "is_monotonic", False))
                    for dp in data.data_points:
                        value = dp.as_double if dp.HasField("as_double") else float(dp.as_int)
                        out.append(
                            Point(
                                metric.name,
                                metric.unit,
                                kind,
                                monotonic,
                                attributes(dp.attributes),
                                value,
                                resource,
                                sm.scope.name,
                            )
                        )
    return out
