"""A real Prometheus scrapes a run's endpoint; its HTTP API must show the recorded values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.metrics import Observation

from agent.store import connect
from exporters.naming import InstrumentSpec, build_plan
from exporters.prometheus import Exposition, metric_name
from tests.exporters.conftest import recorded_values, wait_for

FINDING = {
    "rule": "thermal_throttle",
    "severity": "critical",
    "entity": "gpu3",
    "summary": "gpu3 throttles on temperature",
    "evidence": {},
    "start_ts": 1.0,
}


DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "accelwatch.json"


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def close_to_one_of(value: float, candidates: set[float], scale: float = 1.0) -> bool:
    return any(value == pytest.approx(c * scale, rel=1e-9, abs=1e-9) for c in candidates)


def by_label(results: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in results}


def test_prometheus_scrapes_otel_and_dcgm_names(record, prometheus, job):
    with record(prometheus="127.0.0.1:0", metric_names="dcgm", simulate="healthy") as session:
        server = prometheus(session.context.health["prometheus.address"])
        session.context.publish_findings([FINDING])
        assert wait_for(
            lambda: (
                len(server.query("DCGM_FI_DEV_GPU_UTIL")) == 8
                and server.query("accelwatch_findings_active")
            ),
            timeout=20,
        )
        up = server.query('up{job="accelwatch"}')
        queried = {
            name: server.query(name)
            for name in (
                "DCGM_FI_DEV_GPU_UTIL",
                "DCGM_FI_DEV_FB_USED",
                "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
                "hw_gpu_utilization",
                "hw_gpu_memory_usage_bytes",
                "process_memory_usage_bytes",
                'process_cpu_time_seconds_total{cpu_mode="user"}',
                "system_cpu_utilization",
                "target_info",
                "accelwatch_findings_active",
            )
        }
        assert wait_for(lambda: session.context.health["prometheus.scrapes"] >= 4, timeout=15)
        empty = [
            expr
            for expr in dashboard_queries()
            if not server.query(expr.replace("$host", ".*").replace("$run", ".*"))
        ]
    assert empty == [], "dashboard panels without data"
    assert [float(r["value"][1]) for r in up] == [1.0]
    assert session.context.health["prometheus.scrapes"] >= 1
    run = session.run
    recorded = recorded_values(session.config.db_path, run.run_id)
    con = connect(session.config.db_path, read_only=True)
    uuids = {
        entity: json.loads(attrs)["uuid"]
        for entity, attrs in con.execute(
            "SELECT entity, attrs FROM entities WHERE run_id = ? AND source = 'nvml' "
            "AND entity SIMILAR TO 'gpu[0-9]+'",
            [run.run_id],
        ).fetchall()
    }
    con.close()

    dcgm_util = queried["DCGM_FI_DEV_GPU_UTIL"]
    for result in dcgm_util:
        labels = result["metric"]
        gpu = f"gpu{labels['gpu']}"
        assert labels["UUID"] == uuids[gpu]
        assert labels["Hostname"] == run.host
        assert labels["modelName"].startswith("NVIDIA")
        assert labels["device"] == f"nvidia{labels['gpu']}"
        assert close_to_one_of(
            float(result["value"][1]), recorded[("nvml", gpu, "gpu.utilization")], scale=100
        )
    for gpu, mib in by_label(queried["DCGM_FI_DEV_FB_USED"], "gpu").items():
        assert close_to_one_of(
            mib, recorded[("nvml", f"gpu{gpu}", "gpu.memory.used")], scale=1 / 2**20
        )
    for gpu, active in by_label(queried["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"], "gpu").items():
        assert close_to_one_of(active, recorded[("nvml", f"gpu{gpu}", "gpu.tensor.activity")])

    entity_of_uuid = {uuid: entity for entity, uuid in uuids.items()}
    for uuid, util in by_label(queried["hw_gpu_utilization"], "hw_id").items():
        assert close_to_one_of(util, recorded[("nvml", entity_of_uuid[uuid], "gpu.utilization")])
    for uuid, used in by_label(queried["hw_gpu_memory_usage_bytes"], "hw_id").items():
        assert close_to_one_of(used, recorded[("nvml", entity_of_uuid[uuid], "gpu.memory.used")])
    assert len(queried["hw_gpu_memory_usage_bytes"]) == 8

    rss = by_label(queried["process_memory_usage_bytes"], "process_pid")
    assert str(job.pid) in rss and len(rss) == 2
    for pid, value in rss.items():
        assert close_to_one_of(value, recorded[("process", pid, "process.memory.rss")])
    for pid, value in by_label(
        queried['process_cpu_time_seconds_total{cpu_mode="user"}'], "process_pid"
    ).items():
        assert close_to_one_of(value, recorded[("process", pid, "process.cpu.user")])
    cpus = by_label(queried["system_cpu_utilization"], "cpu_logical_number")
    assert close_to_one_of(cpus["0"], recorded[("host", "cpu0", "host.cpu.utilization")])
    assert close_to_one_of(cpus[""], recorded[("host", "host", "host.cpu.utilization")])

    (info,) = queried["target_info"]
    assert info["metric"]["service_name"] == "accelwatch"
    assert info["metric"]["accelwatch_run_id"] == run.run_id
    assert info["metric"]["accelwatch_simulated"] == "healthy"
    (finding,) = queried["accelwatch_findings_active"]
    assert finding["metric"]["accelwatch_finding_rule"] == "thermal_throttle"
    assert finding["metric"]["accelwatch_finding_severity"] == "critical"
    assert float(finding["value"][1]) == 1.0


@pytest.mark.parametrize(
    ("name", "unit", "kind", "family", "sample"),
    [
        ("hw.gpu.memory.usage", "By", "gauge", "hw_gpu_memory_usage_bytes", None),
        (
            "process.cpu.time",
            "s",
            "counter",
            "process_cpu_time_seconds",
            "process_cpu_time_seconds_total",
        ),
        ("hw.errors", "{error}", "counter", "hw_errors", "hw_errors_total"),
        ("hw.gpu.utilization", "1", "gauge", "hw_gpu_utilization", None),
        (
            "accelwatch.gpu.pcie.tx_throughput",
            "By/s",
            "gauge",
            "accelwatch_gpu_pcie_tx_throughput_bytes_per_second",
            None,
        ),
        ("accelwatch.gpu.clock.sm", "MHz", "gauge", "accelwatch_gpu_clock_sm_megahertz", None),
        ("DCGM_FI_DEV_GPU_UTIL", "", "gauge", "DCGM_FI_DEV_GPU_UTIL", None),
    ],
)
def test_prometheus_names_follow_the_otel_compatibility_rules(name, unit, kind, family, sample):
    assert metric_name(InstrumentSpec(name, unit, kind, "")) == (family, sample or family)


def test_exposition_escapes_labels_and_renders_non_finite_values():
    plan = build_plan()
    exposition = Exposition(plan, {}, {"host.name": "n1", "service.name": "accelwatch"})
    attrs = {"process.pid": 7, "process.executable.name": 'we"ird\\name'}
    text = exposition.render(
        {
            "process.memory.usage": [Observation(float("nan"), attrs)],
            "process.thread.count": [Observation(float("inf"), {})],
        }
    )
    assert 'target_info{host_name="n1",service_name="accelwatch"} 1' in text
    assert (
        'process_memory_usage_bytes{process_executable_name="we\\"ird\\\\name",'
        'process_pid="7",host_name="n1"} NaN'
    ) in text
    assert 'process_thread_count{host_name="n1"} +Inf' in text
    assert "# TYPE process_memory_usage_bytes gauge" in text
