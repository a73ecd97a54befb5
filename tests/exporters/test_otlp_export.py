"""OTLP gRPC and HTTP export of a real session, checked against the run's DuckDB record."""

from __future__ import annotations

import json

import pytest

from agent.catalog import CATALOG, Metric
from agent.store import connect
from exporters.findings import FINDINGS_GAUGE, RULE, SEVERITY
from tests.exporters.conftest import recorded_values, wait_for
from tests.exporters.receivers import Point, attributes, points

FINDING = {
    "rule": "dataloader_starved",
    "severity": "warning",
    "entity": "gpu0",
    "summary": "GPU waits on the input pipeline 40% of the time",
    "evidence": {"metric": "gpu.utilization", "window_s": 30, "mean": 0.41},
    "next_step": "raise num_workers",
    "start_ts": 1000.0,
    "end_ts": None,
}


@pytest.fixture(params=["grpc", "http/protobuf"])
def receiver(request, grpc_receiver, http_receiver, otel_env):
    """A receiver of the parametrized protocol, chosen the standard way (OTEL_*_PROTOCOL)."""
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", request.param)
    return grpc_receiver if request.param == "grpc" else http_receiver


def catalog_metric(point: Point) -> Metric:
    """The catalog metric an exported point stands for (name + the metric's own attributes)."""
    matches = [
        m
        for m in CATALOG
        if point.name in (m.otel_name, f"accelwatch.{m.name}")
        and all(point.attributes.get(k) == v for k, v in m.otel_attributes.items())
    ]
    assert len(matches) == 1, (point.name, point.attributes, [m.name for m in matches])
    return matches[0]


def gpu_entities(db_path: str, run_id: str) -> dict[str, str]:
    """uuid → entity of the run's GPUs and MIG devices, from the ``entities`` view."""
    con = connect(db_path, read_only=True)
    rows = con.execute(
        "SELECT entity, attrs FROM entities WHERE run_id = ? AND source = 'nvml'", [run_id]
    ).fetchall()
    con.close()
    return {
        json.loads(attrs)["uuid"]: entity for entity, attrs in rows if "uuid" in json.loads(attrs)
    }


def entity_of(metric: Metric, attrs: dict, gpus: dict[str, str]) -> list[str]:
    """The recorded entity names a point's attributes can stand for."""
    if metric.source == "process":
        return [str(attrs["process.pid"])]
    if metric.source == "nvml":
        gpu = gpus[attrs["hw.id"]]
        if "process.pid" in attrs:
            return [f"{gpu}/pid{attrs['process.pid']}"]
        if "accelwatch.gpu.nvlink" in attrs:
            return [f"{gpu}/nvlink{attrs['accelwatch.gpu.nvlink']}"]
        return [gpu]
    if "cpu.logical_number" in attrs:
        return [f"cpu{attrs['cpu.logical_number']}"]
    if "network.interface.name" in attrs:
        return [f"net:{attrs['network.interface.name']}"]
    if "rpc.method" in attrs:  # an NFS operation of a mount (storage source)
        return [f"nfsop:{attrs['rpc.method']}@{attrs['system.filesystem.mountpoint']}"]
    if "system.filesystem.mountpoint" in attrs:
        return [f"mount:{attrs['system.filesystem.mountpoint']}"]
    if "system.device" in attrs:
        return [f"disk:{attrs['system.device']}", f"ib:{attrs['system.device']}"]
    return ["host"]


def test_otlp_export_matches_the_recorded_run(record, receiver, job):
    with record(otlp=receiver.endpoint, simulate="healthy") as session:
        assert wait_for(lambda: len(receiver.recorded.metrics) >= 3)
        session.context.publish_findings([FINDING])
        assert wait_for(lambda: receiver.recorded.logs)
        assert wait_for(
            lambda: any(p.name == FINDINGS_GAUGE for p in points(receiver.recorded.metrics))
        )
    run = session.run
    assert session.context.health["otlp.failed_exports"] == 0
    assert session.context.health["otlp.exports"] >= 3
    recorded = recorded_values(session.config.db_path, run.run_id)
    gpus = gpu_entities(session.config.db_path, run.run_id)
    assert len(gpus) == 8
    exported = points(receiver.recorded.metrics)

    resource = exported[0].resource
    assert resource["service.name"] == "accelwatch"
    assert resource["host.name"] == run.host
    assert resource["accelwatch.run.id"] == run.run_id
    assert resource["accelwatch.run.name"] == run.name
    assert {p.scope for p in exported} == {"accelwatch"}

    checked = 0
    job_pids = {job.pid, *(int(e) for (s, e, _m) in recorded if s == "process")}
    for point in exported:
        if point.name == FINDINGS_GAUGE:
            continue
        metric = catalog_metric(point)
        assert point.unit == metric.unit
        assert point.kind == ("sum" if metric.is_counter else "gauge")
        assert point.monotonic == metric.is_counter
        keys = [(metric.source, e, metric.name) for e in entity_of(metric, point.attributes, gpus)]
        values = set().union(*(recorded.get(k, set()) for k in keys))
        assert point.value in values, (point, keys)
        if metric.source == "process":
            assert point.attributes["process.pid"] in job_pids
            assert point.attributes["process.executable.name"].startswith("python")
        checked += 1
    assert checked > 50
    names = {p.name for p in exported}
    assert {
        "system.cpu.utilization",
        "system.cpu.mode.utilization",
        "system.memory.usage",
        "system.memory.limit",
        "system.network.io",
        "process.cpu.time",
        "process.memory.usage",
        "process.thread.count",
    } <= names
    pids = {p.attributes["process.pid"] for p in exported if p.name == "process.memory.usage"}
    assert pids == job_pids and len(pids) == 2
    roles = {
        p.attributes["accelwatch.process.role"]
        for p in exported
        if p.name == "process.memory.usage"
    }
    assert roles == {"main", "worker"}
    assert {
        "hw.gpu.utilization",
        "hw.gpu.memory.usage",
        "hw.gpu.memory.limit",
        "hw.gpu.io",
        "hw.power",
        "hw.energy",
        "hw.temperature",
        "hw.errors",
    } <= names
    utilization = [p for p in exported if p.name == "hw.gpu.utilization"]
    assert {p.attributes["hw.id"] for p in utilization} == set(gpus)
    assert all(
        p.attributes["hw.vendor"] == "NVIDIA"
        and p.attributes["hw.type"] == "gpu"
        and p.attributes["hw.name"].startswith("NVIDIA")
        for p in utilization
    )
    directions = {p.attributes["network.io.direction"] for p in exported if p.name == "hw.gpu.io"}
    assert directions == {"transmit", "receive"}
    assert not any(n.startswith("DCGM_") for n in names)  # only with --metric-names dcgm
    cpus = {
        p.attributes.get("cpu.logical_number")
        for p in exported
        if p.name == "system.cpu.utilization"
    }
    assert {0, None} <= cpus

    findings = [p for p in exported if p.name == FINDINGS_GAUGE]
    assert findings[-1].attributes == {RULE: "dataloader_starved", SEVERITY: "warning"}
    assert findings[-1].value == 1 and findings[-1].unit == "{finding}"


def test_findings_are_exported_as_log_records(record, receiver):
    with record(otlp=receiver.endpoint) as session:
        session.context.publish_findings([FINDING])
        assert wait_for(lambda: receiver.recorded.logs)
        session.context.publish_findings([])
        assert wait_for(
            lambda: (
                sum(
                    len(sl.log_records)
                    for r in receiver.recorded.logs
                    for rl in r.resource_logs
                    for sl in rl.scope_logs
                )
                >= 2
            )
        )
    records = [
        (attributes(rl.resource.attributes), lr)
        for request in receiver.recorded.logs
        for rl in request.resource_logs
        for sl in rl.scope_logs
        for lr in sl.log_records
    ]
    (resource, active), (_, resolved) = records[:2]
    assert resource["accelwatch.run.id"] == session.run.run_id
    assert active.body.string_value == FINDING["summary"]
    assert active.severity_text == "WARNING" and active.severity_number == 13  # WARN
    assert active.event_name == "accelwatch.finding"
    attrs = attributes(active.attributes)
    assert attrs["accelwatch.finding.rule"] == "dataloader_starved"
    assert attrs["accelwatch.finding.entity"] == "gpu0"
    assert attrs["accelwatch.finding.state"] == "active"
    assert attrs["accelwatch.finding.next_step"] == "raise num_workers"
    assert '"mean": 0.41' in attrs["accelwatch.finding.evidence"]
    assert resolved.body.string_value == "resolved: " + FINDING["summary"]
    assert attributes(resolved.attributes)["accelwatch.finding.state"] == "resolved"
