"""OTLP to an endpoint that stays down: exponential backoff, nothing built between attempts,
every point that did not go out counted, and a bounded cost (issue 14)."""

from __future__ import annotations

import logging

from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics.export import MetricExportResult

from exporters.naming import InstrumentSpec, build_plan
from exporters.otlp import MAX_BACKOFF_INTERVALS
from exporters.otlp_health import CountingMetricExporter, ExportHealth
from exporters.otlp_metrics import MetricsTicker
from exporters.otlp_request import RequestBuilder, request_points
from tests.exporters.conftest import _free_port, assert_record_complete, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health_board(
    interval_s: float = 10.0, address: tuple[str, int] | None = None
) -> tuple[dict, ExportHealth, Clock]:
    clock = Clock()
    board: dict = {}
    health = ExportHealth(
        board,
        lambda *a, **k: None,
        "http://c:4317",
        address=address,
        interval_s=interval_s,
        clock=clock,
    )
    return board, health, clock


def test_failed_exports_back_off_exponentially_up_to_a_cap():
    board, health, clock = health_board(interval_s=10.0)
    waits = []
    for _ in range(6):
        assert health.due()
        health.record("metrics", False, "UNAVAILABLE", points=50)
        start = clock.now
        while not health.due():
            clock.now += 1.0
        waits.append(round(clock.now - start))
    # one interval, two, four, eight ... (a tenth of an interval early counts as due)
    assert waits == [9, 19, 39, 79, 79, 79]
    assert board["otlp.retry_in_s"] == MAX_BACKOFF_INTERVALS * 10.0
    assert board["otlp.failed_exports"] == 6 and board["otlp.dropped_points"] == 300


def test_a_success_ends_the_backoff():
    board, health, clock = health_board()
    health.record("metrics", False, points=5)
    health.record("metrics", False, points=5)
    assert not health.due()
    health.retry_now()  # the final export at shutdown gets its one try
    assert health.due()
    health.record("metrics", True)
    assert health.due() and "otlp.retry_in_s" not in board
    health.record("metrics", False)
    assert board["otlp.retry_in_s"] == 10.0  # starts again from one interval


class FailingExporter:
    """Stands for a collector that is down: every export fails; counts what it was given."""

    def __init__(self) -> None:
        self.calls = 0

    def export_request(self, request):
        self.calls += 1
        return MetricExportResult.FAILURE

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        pass


def builder(points: int) -> RequestBuilder:
    spec = InstrumentSpec("c", "1", "counter", "c")
    plan = build_plan(("otel",))
    plan.instruments = {spec.name: spec}
    observed = {spec.name: [Observation(1.0, {"i": i}) for i in range(points)]}
    return RequestBuilder(plan, {}, ("t", "1"), lambda: observed)


def test_a_skipped_export_is_not_handed_to_the_sdk_exporter_and_its_points_are_counted():
    board, health, clock = health_board(interval_s=1.0)
    inner = FailingExporter()
    exporter = CountingMetricExporter(inner, health)
    request, points = builder(7).build()
    assert points == request_points(request) == 7
    for _ in range(10):  # ten intervals of a collector that is down
        exporter.export(request, points)
        clock.now += 1.0
    assert inner.calls == 4  # at 0, 1, 3 and 7 intervals; the next is due at 15
    assert board["otlp.failed_exports"] == 4
    assert board["otlp.skipped_exports"] == 6
    assert board["otlp.dropped_points"] == 70


def test_a_skipped_interval_builds_no_request():
    board, health, clock = health_board(interval_s=1.0, address=("127.0.0.1", _free_port()))
    built = []
    source = builder(3)

    def build():
        built.append(clock.now)
        return source.build()

    ticker = MetricsTicker(build, CountingMetricExporter(FailingExporter(), health), health, 1.0)
    for _ in range(8):
        ticker.export_now()
        clock.now += 1.0
    assert built == [1000.0]  # later attempts stop at the refused TCP connect, or back off
    assert board["otlp.skipped_exports"] + board["otlp.failed_exports"] == 8
    assert board["otlp.dropped_points"] == 8 * 3


def test_a_collector_that_stays_down_gets_few_attempts_and_sampling_goes_on(
    record, grpc_receiver, caplog
):
    """0.3 s interval, attempts of up to 1 s (the timeout): without the backoff every interval
    is an attempt (about 6 in 8 s); with it, after four failed attempts the next seven
    intervals are skipped, and only the first attempt builds and sends a batch (the others
    stop at a refused TCP connect)."""
    caplog.set_level(logging.ERROR, logger="opentelemetry")
    grpc_receiver.stop()
    grpc_receiver.port = _free_port()
    with record(otlp=grpc_receiver.endpoint) as session:

        def health() -> dict:
            return session.context.health  # a fresh view each time

        ok = wait_for(lambda: int(health().get("otlp.skipped_exports", 0)) >= 7, timeout=15)
        assert ok, health()
        failed = int(health()["otlp.failed_exports"])
        assert 4 <= failed <= 5  # four attempts, and the first-tick export that shows the fault
        sent = [r for r in caplog.records if r.getMessage().startswith("Failed to export metrics")]
        assert len(sent) == 1, [r.getMessage() for r in sent]
        assert int(health()["otlp.dropped_points"]) > 0
        assert health()["otlp.state"] == "failing"
        grpc_receiver.start()  # back: seen within the capped backoff (8 intervals, 2.4 s)
        assert wait_for(lambda: grpc_receiver.recorded.metrics, timeout=6)
        assert wait_for(lambda: health().get("otlp.state") == "ok", timeout=3)
    assert_record_complete(session)
