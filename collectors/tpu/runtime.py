"""A client of libtpu's ``RuntimeMetricService`` that never stalls the sampler.

libtpu serves runtime metrics over gRPC on ``localhost:8431`` (one port per TPU process:
``TPU_RUNTIME_METRICS_PORTS=8431,8432,...``) once a program has started. Per endpoint we ask
``ListSupportedMetrics`` once, then each tick fire every offered metric's ``GetRuntimeMetric``
at once as futures and wait at most ``deadline`` seconds for them all, so a hung runtime costs
one deadline per tick, whatever the number of metrics. An endpoint that does not answer is
*down* (not started yet, or gone): a state, retried with exponential backoff on the caller's
clock, never an exception.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# grpc's C core logs transport notices (GOAWAY from a runtime going away) to stderr, which is
# the user's terminal; a runtime coming and going is recorded as events instead.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402 - after GRPC_VERBOSITY, which grpc reads when it loads
from tpu_info.proto import tpu_metric_service_pb2 as pb  # noqa: E402
from tpu_info.proto import tpu_metric_service_pb2_grpc as pb_grpc  # noqa: E402

from collectors.tpu.collector import DEFAULT_DEADLINE_S  # noqa: E402 - one deadline, kept there
from collectors.tpu.targets import (  # noqa: E402, F401 - re-exported for the collector and tests
    DEFAULT_PORT,
    TargetSpecError,
    parse_targets,
)

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0


def _is_loopback(target: str) -> bool:
    host = target.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_channel(target: str) -> grpc.Channel:
    """libtpu accepts local credentials (as tpu-info connects); a remote runtime, plaintext."""
    if _is_loopback(target):
        return grpc.secure_channel(target, grpc.local_channel_credentials())
    return grpc.insecure_channel(target)


@dataclass
class Scrape:
    """What one tick read from one endpoint: responses by metric name, and what failed."""

    target: str
    responses: dict[str, Any] = field(default_factory=dict)  # metric name → TPUMetric
    status: Any | None = None  # GetTpuRuntimeStatusResponse
    failed: dict[str, str] = field(default_factory=dict)  # metric name → gRPC status name


@dataclass
class Transition:
    """An endpoint came up or went down (the caller turns it into one event)."""

    target: str
    up: bool
    reason: str
    offered: tuple[str, ...] = ()


class Endpoint:
    """One libtpu process's metrics service and what we know of its state."""

    def __init__(self, target: str, channel_factory: Callable[[str], grpc.Channel]) -> None:
        self.target = target
        self._channel_factory = channel_factory
        self._channel: grpc.Channel | None = None
        self._stub: Any = None
        self.up = False
        self.ever_up = False
        self.offered: tuple[str, ...] = ()
        self.status_offered = True
        self.next_try = 0.0
        self.backoff = BACKOFF_MIN_S

    def stub(self) -> Any:
        if self._stub is None:
            self._channel = self._channel_factory(self.target)
            self._stub = pb_grpc.RuntimeMetricServiceStub(self._channel)
        return self._stub

    def mark_down(self, now: float) -> None:
        self.up = False
        self.next_try = now + self.backoff
        self.backoff = min(BACKOFF_MAX_S, self.backoff * 2)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None


_DOWN_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


class RuntimeClient:
    """Scrapes every endpoint; ``scrape(now)`` returns within about ``deadline`` seconds."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        wanted: Iterable[str],
        deadline: float = DEFAULT_DEADLINE_S,
        channel_factory: Callable[[str], grpc.Channel] = open_channel,
    ) -> None:
        self.deadline = deadline
        self.wanted = frozenset(wanted)
        self.endpoints = [Endpoint(t, channel_factory) for t in targets]
        self.calls = 0
        self.timeouts = 0
        self.errors = 0

    def scrape(self, now: float) -> tuple[list[Scrape], list[Transition]]:
        """One tick: connect endpoints whose backoff expired, read the up ones."""
        transitions: list[Transition] = []
        for ep in self.endpoints:
            if not ep.up and now >= ep.next_try:
                t = self._connect(ep, now)
                if t is not None:
                    transitions.append(t)
        pending: list[tuple[Endpoint, str, Any]] = []
        for ep in self.endpoints:
            if not ep.up:
                continue
            stub = ep.stub()
            for name in ep.offered:
                req = pb.MetricRequest(metric_name=name)
                pending.append((ep, name, stub.GetRuntimeMetric.future(req, timeout=self.deadline)))
            if ep.status_offered:
                req = pb.GetTpuRuntimeStatusRequest(include_hlo_info=False)
                fut = stub.GetTpuRuntimeStatus.future(req, timeout=self.deadline)
                pending.append((ep, "", fut))
        self.calls += len(pending)
        end = time.monotonic() + self.deadline + 0.05
        for *_, fut in pending:  # every call carries the deadline: this waits about one
            with contextlib.suppress(grpc.FutureTimeoutError, grpc.FutureCancelledError):
                fut.exception(timeout=max(0.0, end - time.monotonic()))
        scrapes = {ep.target: Scrape(ep.target) for ep in self.endpoints if ep.up}
        down: dict[str, str] = {}
        for ep, name, fut in pending:
            scrape = scrapes[ep.target]
            if not fut.done():
                fut.cancel()
                self.timeouts += 1
                scrape.failed[name or "status"] = "DEADLINE_EXCEEDED"
                continue
            try:
                resp = fut.result(timeout=0)
            except grpc.RpcError as exc:  # the future is itself the RpcError
                code = exc.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self.timeouts += 1
                else:
                    self.errors += 1
                if name == "" and code == grpc.StatusCode.UNIMPLEMENTED:
                    ep.status_offered = False
                    continue
                if code in _DOWN_CODES:
                    down[ep.target] = code.name
                scrape.failed[name or "status"] = code.name if code else "UNKNOWN"
                continue
            except Exception as exc:  # a cancelled future or a malformed answer
                self.errors += 1
                scrape.failed[name or "status"] = type(exc).__name__
                continue
            if name:
                scrape.responses[name] = resp.metric
            else:
                scrape.status = resp
        for ep in self.endpoints:
            if ep.target in down:
                ep.mark_down(now)
                scrapes.pop(ep.target, None)
                transitions.append(Transition(ep.target, False, f"runtime lost: {down[ep.target]}"))
        return list(scrapes.values()), transitions

    def _connect(self, ep: Endpoint, now: float) -> Transition | None:
        try:
            resp = ep.stub().ListSupportedMetrics(
                pb.ListSupportedMetricsRequest(), timeout=self.deadline
            )
        except grpc.RpcError as exc:
            self.errors += 1
            first = not ep.ever_up and ep.backoff == BACKOFF_MIN_S
            ep.mark_down(now)
            if first:
                code = exc.code()
                return Transition(ep.target, False, f"runtime not up: {code.name if code else exc}")
            return None
        names = tuple(m.metric_name for m in resp.supported_metric)
        ep.offered = tuple(n for n in names if n in self.wanted)
        ep.up = ep.ever_up = True
        ep.backoff = BACKOFF_MIN_S
        unknown = tuple(n for n in names if n not in self.wanted)
        return Transition(ep.target, True, "runtime up", offered=ep.offered + unknown)

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()
