"""Between exports the agent holds no gRPC channel, so gRPC's threads end (issue 14: an idle
channel kept them waking for ~0.35 ms of CPU per second, one to a down collector ~0.7 ms), and
no log batching thread wakes every second before there is a finding to send."""

from __future__ import annotations

import json
import threading

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics.export import MetricExportResult

from exporters.otlp import log_exporter
from exporters.otlp_logs import LazyBatchLogRecordProcessor
from exporters.otlp_metrics import metric_exporter
from tests.exporters.test_otlp_backoff import builder
from tests.helpers import run_python


def test_metrics_go_out_as_the_encoded_bytes_on_a_channel_closed_after_each_export(
    grpc_receiver,
):
    exporter = metric_exporter(grpc_receiver.endpoint, timeout_s=5)
    assert exporter._channel is None  # not even before the first export
    source = builder(7)
    sent = []
    for _ in range(2):
        request, points = source.build_encoded()
        assert request is not None and points == 7
        assert exporter.export_request(request) is MetricExportResult.SUCCESS
        assert exporter._channel is None and exporter._client is None
        sent.append(request.parsed())
    assert grpc_receiver.recorded.metrics == sent  # what was encoded is what arrived
    exporter.shutdown()


def test_a_request_object_is_still_sent_whole(grpc_receiver):
    exporter = metric_exporter(grpc_receiver.endpoint, timeout_s=5)
    request, _ = builder(3).build()
    assert exporter.export_request(request) is MetricExportResult.SUCCESS
    assert grpc_receiver.recorded.metrics == [request]
    exporter.shutdown()


def test_log_records_go_out_on_a_channel_closed_after_each_export(grpc_receiver):
    exporter = log_exporter(grpc_receiver.endpoint, timeout_s=5)
    assert exporter._channel is None
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("t")
    for body in ("one", "two"):
        logger.emit(body=body, severity_number=SeverityNumber.WARN)
        assert exporter._channel is None
    bodies = [
        record.body.string_value
        for request in grpc_receiver.recorded.logs
        for resource in request.resource_logs
        for scope in resource.scope_logs
        for record in scope.log_records
    ]
    assert bodies == ["one", "two"]
    provider.shutdown()


def test_no_export_opens_a_channel_after_shutdown(grpc_receiver):
    exporter = metric_exporter(grpc_receiver.endpoint, timeout_s=5)
    exporter.shutdown()
    request, _ = builder(2).build_encoded()
    assert request is not None
    assert exporter.export_request(request) is MetricExportResult.FAILURE
    assert exporter._channel is None and grpc_receiver.recorded.metrics == []


GRPC_THREADS = """
    import json, os, sys, time
    from exporters.otlp_metrics import metric_exporter
    from exporters.otlp import log_exporter
    from tests.exporters.test_otlp_backoff import builder

    def grpc_threads():
        names = []
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    name = f.read().strip()
            except OSError:  # the thread ended since the listing: it runs no more
                continue
            if name.startswith(("event_engine", "grpc_global", "lifeguard")):
                names.append(name)
        return names

    metrics = metric_exporter(sys.argv[1], timeout_s=5)
    logs = log_exporter(sys.argv[1], timeout_s=5)
    request, _ = builder(5).build_encoded()
    during = []
    real_export = metrics._export
    def export(data):
        result = real_export(data)
        during.extend(grpc_threads())  # the channel is still open here
        return result
    metrics._export = export
    ok = metrics.export_request(request).name
    deadline = time.monotonic() + 10
    while grpc_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"ok": ok, "during": len(during), "after": grpc_threads()}))
"""


def test_grpc_threads_end_between_exports(grpc_receiver):
    code = GRPC_THREADS.replace("sys.argv[1]", repr(grpc_receiver.endpoint))
    out = json.loads(run_python(code).stdout.splitlines()[-1])
    assert out["ok"] == "SUCCESS" and len(grpc_receiver.recorded.metrics) == 1
    assert out["during"] > 0  # gRPC's threads do run while an export is on its channel ...
    assert out["after"] == []  # ... and are gone once it is over


def batch_threads() -> int:
    return sum(t.name.startswith("OtelBatch") for t in threading.enumerate())


def test_no_log_batching_thread_runs_until_the_first_finding_is_logged(grpc_receiver):
    before = batch_threads()
    processor = LazyBatchLogRecordProcessor(log_exporter(grpc_receiver.endpoint, timeout_s=5))
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(processor)
    logger = provider.get_logger("t")
    assert not processor.started and batch_threads() == before  # nothing wakes every second
    logger.emit(body="gpu3 throttled", severity_number=SeverityNumber.WARN)
    assert processor.started and batch_threads() == before + 1
    assert processor.force_flush(5_000)
    (request,) = grpc_receiver.recorded.logs
    assert request.resource_logs[0].scope_logs[0].log_records[0].body.string_value == (
        "gpu3 throttled"
    )
    provider.shutdown()
    assert batch_threads() == before


def test_a_log_processor_that_never_started_shuts_its_exporter_down(grpc_receiver):
    exporter = log_exporter(grpc_receiver.endpoint, timeout_s=5)
    LazyBatchLogRecordProcessor(exporter).shutdown()
    assert exporter._shutdown
