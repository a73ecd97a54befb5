"""The live reader's recent window: a tick touches only the values it keeps."""

from __future__ import annotations

import numpy as np

from agent.model import Batch
from agent.reader import _RecentWindow
from agent.snapshot import Snapshot

TRACKED = frozenset({"gpu.utilization"})


class _CountedValues(list):
    """A batch's values column that counts the values read from it by position."""

    reads = 0

    def __getitem__(self, index):  # type: ignore[override]
        _CountedValues.reads += 1
        return super().__getitem__(index)


class _CountedMapping(dict):
    """A snapshot's ``values`` that counts every look at it."""

    looks = 0

    def items(self):  # type: ignore[override]
        _CountedMapping.looks += len(self)
        return super().items()

    def __iter__(self):
        _CountedMapping.looks += len(self)
        return super().__iter__()


def _tick(ts: float, gpus: int = 2, processes: int = 50, extra: str | None = None) -> Snapshot:
    gpu_entities = [f"gpu{i}" for i in range(gpus) for _ in range(3)]
    gpu_metrics = ["gpu.utilization", "gpu.temperature", "gpu.power"] * gpus
    if extra is not None:
        gpu_entities.append(extra)
        gpu_metrics.append("gpu.utilization")
    gpu_values = _CountedValues(ts + i for i in range(len(gpu_metrics)))
    procs = [str(1000 + i) for i in range(processes) for _ in range(2)]
    proc_metrics = ["process.cpu.utilization", "process.memory.rss"] * processes
    proc_values = _CountedValues(float(i) for i in range(len(procs)))
    batches = (
        Batch("nvml", ts, gpu_entities, gpu_metrics, gpu_values),
        Batch("process", ts, procs, proc_metrics, proc_values),
    )
    values = _CountedMapping()
    for b in batches:
        values.update(zip(zip(b.entities, b.metrics), list.__iter__(b.values)))
    return Snapshot(ts, int(ts), batches, values)


def test_recent_window_reads_only_the_values_it_keeps_once_the_rows_are_known():
    window = _RecentWindow(capacity=100)
    window.metrics = TRACKED
    window.add(_tick(1.0))  # the first tick finds where the tracked values are
    _CountedValues.reads = _CountedMapping.looks = 0
    for ts in range(2, 12):
        window.add(_tick(float(ts)))
    assert _CountedMapping.looks == 0  # never the tick's whole mapping
    assert _CountedValues.reads == 10 * 2  # two GPUs' utilization a tick; no process value
    recent = window.window(11.0, 100.0)
    assert set(recent) == {("gpu0", "gpu.utilization"), ("gpu1", "gpu.utilization")}
    np.testing.assert_allclose(recent[("gpu1", "gpu.utilization")], np.arange(1.0, 12.0) + 3)


def test_recent_window_keeps_a_device_that_appears_when_its_source_changes_its_rows():
    window = _RecentWindow(capacity=100)
    window.metrics = TRACKED
    for ts in range(1, 4):
        window.add(_tick(float(ts)))
    for ts in range(4, 6):
        window.add(_tick(float(ts), extra="gpu9"))
    recent = window.window(5.0, 100.0)
    assert len(recent[("gpu0", "gpu.utilization")]) == 5
    np.testing.assert_allclose(recent[("gpu9", "gpu.utilization")], [4.0 + 6, 5.0 + 6])


def test_recent_window_plans_again_when_the_tracked_metrics_change():
    window = _RecentWindow(capacity=100)
    window.metrics = TRACKED
    window.add(_tick(1.0))
    window.metrics = frozenset({"process.memory.rss"})
    window.add(_tick(2.0))
    assert ("1049", "process.memory.rss") in window.window(2.0, 10.0)


def test_recent_window_plans_each_shape_of_a_sources_rows_once():
    """NVML's per-process rows come and go: two shapes alternate, neither is planned again."""
    window = _RecentWindow(capacity=100)
    window.metrics = TRACKED
    window.add(_tick(1.0))
    window.add(_tick(2.0, extra="gpu9"))
    _CountedValues.reads = 0
    for ts in range(3, 13):
        window.add(_tick(float(ts), extra="gpu9" if ts % 2 else None))
    assert _CountedValues.reads == 10 * 2 + 5  # two GPUs a tick, gpu9 on odd ticks
    assert len(window.window(12.0, 100.0)[("gpu9", "gpu.utilization")]) == 6
