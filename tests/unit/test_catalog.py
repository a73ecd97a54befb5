"""The metric catalog is the one list every part reads."""

from __future__ import annotations

import re
import time

from agent.catalog import CATALOG
from agent.source import CollectContext
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


def test_host_and_process_collectors_emit_only_catalog_metrics(tmp_path):
    import os

    ctx = CollectContext(root_pid=os.getpid())
    host, proc = HostCollector(sys_root=tmp_path), ProcessCollector(os.getpid())
    host.start(ctx)
    proc.start(ctx)
    batches = [c.collect(1.0) for c in (host, proc)]
    time.sleep(0.1)  # CPU times tick in 10 ms: utilization needs time to pass between samples
    batches += [c.collect(2.0) for c in (host, proc)]
    names = {m for b in batches for m in b.metrics}
    assert names - set(m.name for m in CATALOG) == set()
    assert {
        "host.cpu.utilization",
        "host.memory.used",
        "process.cpu.user",
        "process.memory.rss",
    } <= names
