"""A real gRPC ``RuntimeMetricService`` on 127.0.0.1, with the stubs tpu-info ships.

It listens with local credentials, as libtpu does, so tpu-info's own client connects to it
unchanged. Before ``runtime_up_s`` and after ``runtime_lost_s`` every call fails UNAVAILABLE,
as a port nobody listens on does. Tests inject faults: ``delay_s`` (a slow runtime),
``fail_with`` (a status code for every ``GetRuntimeMetric``), ``extra_offered`` (metrics this
libtpu offers that no one knows), ``malformed`` (metrics answered with garbage).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent import futures

import grpc
from tpu_info.proto import tpu_metric_service_pb2 as pb
from tpu_info.proto import tpu_metric_service_pb2_grpc as pb_grpc

from collectors.sim.tpu.runtime import SimulatedRuntime
from collectors.sim.tpu.scenario import TpuScenario


class _Servicer(pb_grpc.RuntimeMetricServiceServicer):
    def __init__(self, server: SimulatedTpuServer) -> None:
        self.s = server

    def _gate(self, context: grpc.ServicerContext) -> None:
        self.s.calls += 1
        if self.s.on_request is not None:
            self.s.on_request()
        if self.s.delay_s:
            time.sleep(self.s.delay_s)
        if not self.s.runtime.up():
            context.abort(grpc.StatusCode.UNAVAILABLE, "TPU runtime not running")

    def ListSupportedMetrics(self, request, context):  # noqa: N802 - gRPC method name
        self.s.requested["ListSupportedMetrics"] += 1
        self._gate(context)
        offered = self.s.runtime.offered() + list(self.s.extra_offered) + list(self.s.malformed)
        names = list(dict.fromkeys(offered))
        return pb.ListSupportedMetricsResponse(
            supported_metric=[pb.SupportedMetric(metric_name=n) for n in names]
        )

    def GetRuntimeMetric(self, request, context):  # noqa: N802
        self._gate(context)
        name = request.metric_name
        self.s.requested[name] += 1
        if self.s.fail_with is not None:
            context.abort(self.s.fail_with, "injected fault")
        if name in self.s.malformed:
            bad = pb.TPUMetric(name=name)
            bad.metrics.add(gauge=pb.Gauge(as_string="garbage"))  # no device attribute
            return pb.MetricResponse(metric=bad)
        if name not in self.s.runtime.offered():
            context.abort(grpc.StatusCode.NOT_FOUND, f"metric {name} not found")
        return pb.MetricResponse(metric=self.s.runtime.metric(name))

    def GetTpuRuntimeStatus(self, request, context):  # noqa: N802
        self._gate(context)
        if not self.s.status_offered:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented")
        return self.s.runtime.status()


class SimulatedTpuServer:
    """Serve ``scenario`` on ``127.0.0.1:port`` (0 picks a free port) until ``stop``."""

    def __init__(
        self,
        scenario: TpuScenario,
        *,
        port: int = 0,
        clock: Callable[[], float] = time.time,
        start: float | None = None,
        workers: int = 8,
    ) -> None:
        self.runtime = SimulatedRuntime(scenario, clock, clock() if start is None else start)
        self.delay_s = 0.0
        self.fail_with: grpc.StatusCode | None = None
        self.extra_offered: tuple[str, ...] = ()
        self.malformed: tuple[str, ...] = ()
        self.status_offered = True
        self.on_request: Callable[[], None] | None = None
        self.calls = 0
        self.requested: Counter[str] = Counter()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        pb_grpc.add_RuntimeMetricServiceServicer_to_server(_Servicer(self), self._server)
        creds = grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        try:
            self.port = self._server.add_secure_port(f"127.0.0.1:{port}", creds)
        except RuntimeError:  # newer gRPC raises where older returned 0
            self.port = 0
        if not self.port:
            raise OSError(f"cannot listen on 127.0.0.1:{port}")
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = 0) -> None:
        self._server.stop(grace).wait()
