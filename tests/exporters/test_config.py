"""Standard OTEL_* configuration, protocol choice, resource attributes, failure accounting."""

from __future__ import annotations

import socket

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from agent.app.session import Session, SessionConfig
from agent.errors import UsageError
from agent.model import RunInfo
from agent.snapshot import SnapshotHub
from exporters import build_exporters
from exporters.findings import FindingLogEmitter, FindingsGauge
from exporters.otlp import GRPC, HTTP, choose_protocol, signal_endpoint
from exporters.otlp_health import ExportHealth
from exporters.resource import build_resource, run_attributes
from tests.exporters.conftest import wait_for
from tests.exporters.receivers import points


@pytest.mark.parametrize(
    ("endpoint", "environ", "expected"),
    [
        ("http://collector:4317", {}, GRPC),
        ("collector:4318", {}, HTTP),
        ("https://otlp.example.com/v1/metrics", {}, HTTP),
        ("http://collector:9999", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, HTTP),
        (
            "http://collector:4318",
            {
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            GRPC,
        ),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, HTTP),
        (None, {}, GRPC),
    ],
)
def test_protocol_comes_from_otel_variables_or_the_endpoint(endpoint, environ, expected):
    assert choose_protocol(endpoint, "METRICS", environ) == expected


def test_unsupported_protocols_are_usage_errors():
    with pytest.raises(UsageError, match="http/json"):
        choose_protocol(None, "METRICS", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(UsageError, match="unknown"):
        choose_protocol(None, "METRICS", {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})


def test_command_line_endpoints_become_signal_urls():
    assert signal_endpoint("collector:4317", GRPC, "v1/metrics") == "http://collector:4317"
    assert signal_endpoint("http://c:4318", HTTP, "v1/metrics") == "http://c:4318/v1/metrics"
    assert signal_endpoint("https://c/otlp/v1/metrics", HTTP, "v1/logs") == "https://c/otlp/v1/logs"


def _run(**env) -> RunInfo:
    return RunInfo(
        run_id="r-1",
        name="train.py",
        pid=42,
        cmdline=[],
        cwd="/",
        host="node7",
        started=0.0,
        interval=1.0,
        db_path="x",
        env=env,
    )


def test_resource_identifies_run_rank_job_and_pod(tmp_path):
    (tmp_path / "namespace").write_text("ml-team\n")
    attrs = run_attributes(
        _run(RANK="3", WORLD_SIZE="16", LOCAL_RANK="1", SLURM_JOB_ID="991"),
        {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "trainer-0"},
        tmp_path,
    )
    assert attrs["service.name"] == "accelwatch" and attrs["host.name"] == "node7"
    assert attrs["accelwatch.run.id"] == "r-1" and attrs["accelwatch.run.name"] == "train.py"
    assert (attrs["accelwatch.rank"], attrs["accelwatch.world_size"]) == (3, 16)
    assert attrs["accelwatch.local_rank"] == 1 and attrs["slurm.job.id"] == 991
    assert attrs["k8s.pod.name"] == "trainer-0" and attrs["k8s.namespace.name"] == "ml-team"
    assert "k8s.pod.name" not in run_attributes(_run(), {"HOSTNAME": "laptop"}, tmp_path)


def test_users_otel_resource_variables_win(otel_env):
    otel_env.setenv("OTEL_SERVICE_NAME", "trainer-agent")
    otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,host.name=n1")
    attrs = build_resource(_run(), {}).attributes
    assert attrs["service.name"] == "trainer-agent"
    assert attrs["deployment.environment"] == "prod" and attrs["host.name"] == "n1"
    assert attrs["accelwatch.run.id"] == "r-1"


def test_failed_exports_are_counted_exactly_and_noted_at_a_limited_rate():
    health: dict = {}
    notes: list[tuple] = []
    accounting = ExportHealth(
        health, lambda kind, entity, **d: notes.append((kind, d)), "http://c:4317", event_gap_s=3600
    )
    for _ in range(5):
        accounting.record("metrics", False, "UNAVAILABLE")
    accounting.record("metrics", True)
    accounting.record("metrics", False)
    assert health["otlp.failed_exports"] == 6 and health["otlp.exports"] == 1
    assert [kind for kind, _ in notes] == ["export_failed", "export_recovered"]
    assert notes[0][1]["failed_exports"] == 1 and notes[0][1]["error"] == "UNAVAILABLE"


def test_findings_gauge_reports_zero_once_a_finding_clears():
    current = [
        {"rule": "r1", "severity": "warning", "entity": "gpu0", "start_ts": 1.0},
        {"rule": "r1", "severity": "warning", "entity": "gpu1", "start_ts": 2.0},
    ]
    gauge = FindingsGauge(lambda: current)
    assert [(o.value, o.attributes["accelwatch.finding.rule"]) for o in gauge.observe()] == [
        (2, "r1")
    ]
    current = []
    assert [o.value for o in gauge.observe()] == [0]


def test_finding_log_emitter_emits_on_appear_and_clear_only():
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    findings: list = []
    emitter = FindingLogEmitter(provider.get_logger("t"), lambda: findings)
    hub = SnapshotHub()
    snap = hub.publish(10.0, [], {})
    emitter(snap)
    findings = [
        {
            "rule": "r",
            "severity": "error",
            "entity": "gpu1",
            "summary": "s",
            "evidence": {"x": 1},
            "start_ts": 5.0,
        }
    ]
    emitter(snap)
    emitter(snap)  # same list: nothing new
    findings = []
    emitter(snap)
    logs = exporter.get_finished_logs()
    assert [log.log_record.body for log in logs] == ["s", "resolved: s"]
    assert logs[0].log_record.severity_text == "ERROR"
    assert logs[0].log_record.attributes["accelwatch.finding.start_ts"] == 5.0


def test_otel_variables_configure_an_env_only_export(record, http_receiver, otel_env):
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", http_receiver.endpoint)
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    otel_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=ml,authorization=Bearer%20t0k")
    otel_env.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    otel_env.setenv("OTEL_SERVICE_NAME", "trainer-agent")
    with record(otlp=""):
        assert wait_for(lambda: http_receiver.recorded.metrics)
    headers = http_receiver.recorded.headers[0]
    assert headers["x-team"] == "ml" and headers["authorization"] == "Bearer t0k"
    assert headers["content-encoding"] == "gzip"
    assert points(http_receiver.recorded.metrics)[0].resource["service.name"] == "trainer-agent"


def test_otel_sdk_disabled_turns_export_off(record, grpc_receiver, otel_env):
    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    with record(otlp=grpc_receiver.endpoint, prometheus="127.0.0.1:0") as session:
        assert wait_for(lambda: session.sampler.stats.ticks >= 3)
    assert grpc_receiver.recorded.metrics == []
    assert "prometheus.address" not in session.context.health


def test_build_exporters_reads_the_session_config(otel_env):
    assert build_exporters(SessionConfig(db_path="x")) == []
    (exporter,) = build_exporters(
        SessionConfig(db_path="x", prometheus="127.0.0.1:0", metric_names="dcgm")
    )
    assert (exporter.prometheus_address, exporter.metric_names) == ("127.0.0.1:0", "dcgm")
    otel_env.setenv("ACCELWATCH_EXPORT_MAX_PROCESSES", "8")
    assert build_exporters(SessionConfig(db_path="x", otlp=""))[0].max_processes == 8
    otel_env.setenv("ACCELWATCH_EXPORT_MAX_PROCESSES", "many")
    with pytest.raises(UsageError, match="whole number"):
        build_exporters(SessionConfig(db_path="x", otlp=""))


def test_a_taken_prometheus_port_is_a_one_line_error_before_any_job(tmp_path, job):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = SessionConfig(
            db_path=str(tmp_path / "r.duckdb"),
            interval=0.2,
            prometheus=f"127.0.0.1:{port}",
            live_analysis=False,
        )
        with pytest.raises(UsageError) as raised:
            build_exporters(config)
        assert str(raised.value) == f"--prometheus 127.0.0.1:{port}: address already in use"
        session = Session(config)
        with pytest.raises(UsageError, match=f"--prometheus 127.0.0.1:{port}"):
            session.attach(job.pid)
    assert session.sampler is None or not session.sampler.running


def test_build_exporters_binds_the_prometheus_port_and_stop_releases_it_unstarted(otel_env):
    (exporter,) = build_exporters(SessionConfig(db_path="x", prometheus="127.0.0.1:0"))
    port = exporter.prometheus.port
    with socket.socket() as probe, pytest.raises(OSError):
        probe.bind(("127.0.0.1", port))  # bound before start
    exporter.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # released although never started


@pytest.mark.parametrize(
    ("config", "environ", "message"),
    [
        ({"otlp": "not a url::"}, {}, "--otlp 'not a url::': not a host[:port]"),
        ({"otlp": "ftp://c:4317"}, {}, "--otlp 'ftp://c:4317': the scheme must be http"),
        ({"otlp": "c:99999"}, {}, "--otlp 'c:99999': the port must be 1-65535"),
        ({"otlp": ""}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "::bad"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"otlp": ""},
            {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://a b"},
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        ),
        ({"otlp": "c:4317"}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "smoke"}, "unknown OTLP protocol"),
        ({"otlp": "c:4317"}, {"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "must be a number"),
        ({"otlp": "c:4317"}, {"OTEL_EXPORTER_OTLP_TIMEOUT": "-1"}, "must be a positive number"),
        ({"otlp": "c:4317"}, {"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "--otlp http://c:4317"),
        ({"prometheus": "127.0.0.1:http"}, {}, "--prometheus 127.0.0.1:http: expected"),
        ({"prometheus": "999.1.1.1:0"}, {}, "--prometheus 999.1.1.1:0:"),
        ({"otlp": "c:4317", "metric_names": "dcmg"}, {}, "--metric-names must be otel or dcgm"),
    ],
)
def test_bad_export_options_are_one_line_usage_errors_at_build(otel_env, config, environ, message):
    for key, value in environ.items():
        otel_env.setenv(key, value)
    with pytest.raises(UsageError) as raised:
        build_exporters(SessionConfig(db_path="x", **config))
    assert message in str(raised.value) and "\n" not in str(raised.value)
