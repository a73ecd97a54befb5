"""The metric catalog is the one list every part reads."""

from __future__ import annotations

import re
import time

from agent.catalog import CATALOG
from agent.source import CollectContext
from collectors.disk import DiskCollector
from collectors.fabric.collector import FabricCollector
from collectors.host import HostCollector
from collectors.process import ProcessCollector

UCUM = re.compile(r"^(1|s|By|By/s|W|J|Cel|MHz|Hz|\{[a-z_]+\})$")


def test_every_metric_is_fully_declared():
    for m in CATALOG:
        assert m.name and m.description and m.source, m
        assert m.kind in ("gauge", "counter"), m
        assert UCUM.match(m.unit), f"{m.name}: unit {m.unit!r} is not a UCUM code we use"
        assert m.otel_name, m


def test_metric_names_carry_no_units():
    for m in CATALOG:
        assert not re.search(r"(_|\.)(mib|mb|gb|pct|percent|mhz|watts|celsius)$", m.name), m.name


def test_every_collector_emits_only_its_sources_catalog_metrics(tmp_path):
    import os

    counters = tmp_path / "class" / "infiniband" / "mlx5_0" / "ports" / "1" / "counters"
    counters.mkdir(parents=True)
    (counters / "port_rcv_data").write_text("10\n")
    (counters / "port_xmit_data").write_text("20\n")
    ctx = CollectContext(root_pid=os.getpid())
    collectors = [
        HostCollector(),
        ProcessCollector(os.getpid()),
        DiskCollector(),
        FabricCollector(sys_root=tmp_path),
    ]
    for c in collectors:
        c.start(ctx)
    batches = [c.collect(1.0) for c in collectors]
    time.sleep(0.1)  # CPU times tick in 10 ms: utilization needs time to pass between samples
    batches += [c.collect(2.0) for c in collectors]
    for b in batches:
        assert {CATALOG[m].source for m in b.metrics} <= {b.source}, b.source
    names = {m for b in batches for m in b.metrics}
    assert {
        "host.cpu.utilization",
        "host.memory.used",
        "process.cpu.user",
        "process.memory.rss",
        "host.ib.rx_bytes",
    } <= names
