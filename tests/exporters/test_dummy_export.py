"""A test-only accelerator source is exported like a GPU: attributes from its entity kind."""

from __future__ import annotations

import time
import urllib.request

from agent.context import LiveContext
from agent.model import RunInfo
from agent.snapshot import SnapshotHub
from exporters import build_exporters
from exporters.naming import entity_attributes
from tests.exporters.conftest import wait_for
from tests.exporters.receivers import points

DEV0 = {"hw.id": "DUMMY-0000", "hw.name": "Dummy Accelerator", "hw.type": "dummy"}


class _Options:
    def __init__(self, otlp: str | None = None, prometheus: str | None = None) -> None:
        self.otlp, self.prometheus, self.metric_names = otlp, prometheus, "dcgm"


def _context(hub: SnapshotHub) -> LiveContext:
    run = RunInfo(
        run_id="r-dummy",
        name="dummy-run",
        pid=1,
        cmdline=["python", "train.py"],
        cwd="/",
        host="node1",
        started=time.time(),
        interval=0.2,
        db_path="unused.duckdb",
    )
    return LiveContext(run, hub, note=lambda *a, **k: None, open_cursor=lambda: None)


def test_dummy_entities_map_to_the_attributes_their_kind_declares(dummy_accelerator):
    described = {"dev0": {"name": "Dummy Accelerator", "uuid": "DUMMY-0000"}}
    assert entity_attributes("dummy", "dev0", described) == DEV0
    assert entity_attributes("dummy", "dev7", {}) == {"hw.id": "dev7", "hw.type": "dummy"}
    assert entity_attributes("dummy", "fan0", {}) == {"accelwatch.entity": "fan0"}


def test_dummy_devices_are_scraped_by_prometheus_and_exported_over_otlp(
    dummy_accelerator, grpc_receiver
):
    dummy_accelerator.model.set(0, busy=0.75)
    collector = dummy_accelerator.spec.collector()
    hub = SnapshotHub()
    (exporter,) = build_exporters(_Options(otlp=grpc_receiver.endpoint, prometheus="127.0.0.1:0"))
    exporter.start(_context(hub))
    try:
        hub.publish(time.time(), [collector.collect(time.time())], {})
        address = exporter.prometheus.address
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            text = response.read().decode()
        busy = [line for line in text.splitlines() if line.startswith("accelwatch_dummy_busy{")]
        assert len(busy) == 2
        assert 'hw_id="DUMMY-0000"' in busy[0] and 'hw_type="dummy"' in busy[0]
        assert busy[0].endswith(" 0.75") and "accelwatch_dummy_power_watts{" in text
        assert "DCGM_" not in text  # dcgm names only for metrics that declare one
        exported = wait_for(
            lambda: [
                p
                for p in points(grpc_receiver.recorded.metrics)
                if p.name == "accelwatch.dummy.busy"
            ]
        )
        assert {p.attributes["hw.id"] for p in exported} == {"DUMMY-0000", "DUMMY-0001"}
        assert all(p.attributes["hw.type"] == "dummy" for p in exported)
    finally:
        exporter.stop()


def test_a_second_stop_does_nothing_and_says_nothing(grpc_receiver, caplog):
    import logging

    (exporter,) = build_exporters(_Options(otlp=grpc_receiver.endpoint))
    exporter.start(_context(SnapshotHub()))
    exporter.stop()
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        exporter.stop()  # e.g. an error path and then the session's end
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
