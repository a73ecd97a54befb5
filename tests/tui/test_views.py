"""Panel contents computed from frames: throttle decoding, process tree, host sums, formats."""

from __future__ import annotations

import ast
from pathlib import Path

from agent.catalog import CATALOG
from agent.model import BatchBuilder
from agent.reader import Frame
from agent.snapshot import SnapshotHub
from tests.tui.synthetic import GIB, ROOT_PID, SyntheticJob
from tui.format import bar, fmt, spark
from tui.views import gpu_views, host_view, process_rows, role_metrics, throttle_reasons


def _frame(job: SyntheticJob, ticks: int = 3) -> Frame:
    hub = SnapshotHub()
    for tick in range(ticks):
        hub.publish(job.ts(tick), job.batches(tick), {})
    return Frame(snapshot=hub.latest, recent={}, findings=[], health={})


def test_throttle_reasons_come_from_the_slowdown_roles_and_idle_is_not_one():
    hub = SnapshotHub()
    b = BatchBuilder("nvml", 1.0)
    b.add("gpu0", "gpu.clock_event.sw_power_cap", 1)
    b.add("gpu0", "gpu.clock_event.gpu_idle", 1)
    b.add("gpu1", "gpu.clock_event.hw_thermal", 1)
    b.add("gpu1", "gpu.clock_event.sw_power_cap", 0)
    snap = hub.publish(1.0, [b.build()], {})
    metrics = role_metrics("nvml")
    assert throttle_reasons(snap, "gpu0", metrics) == ("sw_power_cap",)
    assert throttle_reasons(snap, "gpu1", metrics) == ("hw_thermal",)


def test_gpu_views_order_devices_and_mark_unused_ones():
    views = gpu_views(_frame(SyntheticJob(gpus=11, used=2)))
    assert [v.entity for v in views][:3] == ["gpu0", "gpu1", "gpu2"]
    assert views[-1].entity == "gpu10"
    assert [v.used_by_job for v in views[:3]] == [True, True, False]
    assert views[0].get("accelerator.memory.used") == 60 * GIB


def test_process_rows_keep_tree_order_and_sort_by_measure():
    frame = _frame(SyntheticJob(workers=3))
    tree = process_rows(frame)
    assert [(r.pid, r.depth, r.role) for r in tree] == [
        (ROOT_PID, 0, "main"),
        (ROOT_PID + 1, 1, "worker"),
        (ROOT_PID + 2, 1, "worker"),
        (ROOT_PID + 3, 1, "worker"),
    ]
    assert tree[0].gpu_memory == 59 * GIB
    assert tree[1].read_rate == 21 * 2**20
    by_io = process_rows(frame, "io")
    assert [r.pid for r in by_io] == [ROOT_PID + 3, ROOT_PID + 2, ROOT_PID + 1, ROOT_PID]
    assert process_rows(frame, "cpu")[0].pid == ROOT_PID


def test_host_view_sums_rates_per_kind_of_device():
    host = host_view(_frame(SyntheticJob(cores=6)))
    assert len(host.cores) == 6
    assert host.disk_read == 50 * 2**20
    assert host.ib_rx == 3 * GIB


def test_values_are_formatted_by_their_catalog_unit():
    assert fmt("gpu.utilization", 0.914) == "91%"
    assert fmt("gpu.memory.used", 60 * GIB) == "60.0 GiB"
    assert fmt("gpu.temperature", 91.2) == "91°C"
    assert fmt("process.io.read_bytes", 3e9, per_second=True) == "3.0 GB/s"
    assert fmt("gpu.power", None) == "–"
    assert bar(0.5, 4) == "██··"
    assert spark([0.0, 1.0], 4, top=1.0) == "   █"
    assert len(spark(list(range(100)), 10)) == 10


def test_every_metric_name_the_tui_uses_is_in_the_catalog():
    names = set()
    for path in Path(__file__).resolve().parents[2].joinpath("tui").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.split(".")[0] in ("gpu", "host", "process")
                and node.value.count(".") >= 1
                and " " not in node.value
            ):
                names.add(node.value)
    unknown = {n for n in names if n not in CATALOG and not n.endswith(".")}
    assert names and not unknown, unknown


def test_a_lost_gpu_keeps_its_card_marked_lost():
    job = SyntheticJob(gpus=2, used=2)
    hub = SnapshotHub()
    hub.publish(job.ts(0), job.batches(0), {})
    lost = BatchBuilder("nvml", job.ts(1))
    lost.describe("gpu1", name="NVIDIA H100 80GB HBM3", used_by_job=True, lost=True)
    lost.add("gpu0", "gpu.utilization", 0.9)
    snap = hub.publish(job.ts(1), [lost.build()], {})
    views = gpu_views(Frame(snapshot=snap, recent={}, findings=[], health={}))
    assert [(v.entity, v.lost) for v in views] == [("gpu0", False), ("gpu1", True)]
    assert views[1].get("accelerator.busy") is None
