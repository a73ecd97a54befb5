"""Exporters see findings cause-first: one gauge count and one log record per cause."""

from __future__ import annotations

from datetime import datetime, timedelta

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from agent.analysis.finding import Finding
from agent.snapshot import SnapshotHub
from exporters.findings import FindingLogEmitter, FindingsGauge

T = datetime(2026, 1, 1)
WINDOWS = [[T.isoformat(), (T + timedelta(seconds=60)).isoformat()]]


def _loader_starving_eight_gpus() -> list[dict]:
    def f(rule: str, entity: str, severity: str = "warning") -> dict:
        return Finding(
            rule, severity, entity, T, T + timedelta(seconds=60), f"{rule} {entity}", "next",  # type: ignore[arg-type]
            {"windows": WINDOWS, "util": 0.5},
        ).to_dict()  # fmt: skip

    return [f("dataloader-bound", "host"), *(f("gpu-starvation", f"gpu{i}") for i in range(8))]


def test_the_gauge_counts_the_cause_once_not_its_symptoms():
    gauge = FindingsGauge(_loader_starving_eight_gpus)
    counts = {o.attributes["accelwatch.finding.rule"]: o.value for o in gauge.observe()}
    assert counts == {"dataloader-bound": 1}


def test_one_log_record_names_the_eight_gpus_and_carries_their_evidence():
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    current = _loader_starving_eight_gpus()
    emitter = FindingLogEmitter(provider.get_logger("t"), lambda: current)
    emitter(SnapshotHub().publish(10.0, [], {}))
    (log,) = exporter.get_finished_logs()
    attributes = log.log_record.attributes
    assert attributes["accelwatch.finding.rule"] == "dataloader-bound"
    assert list(attributes["accelwatch.finding.entities"]) == [f"gpu{i}" for i in range(8)]
    assert '"gpu7": [{"evidence"' in attributes["accelwatch.finding.evidence"]
    assert attributes["accelwatch.finding.start_ts"] == 1767225600.0  # 2026-01-01 UTC
