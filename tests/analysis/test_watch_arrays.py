"""The watches' views read through the tick's arrays give what reading value by value gives."""

from __future__ import annotations

import math
from pathlib import Path

from agent.analysis.frame_accel import accelerator_plan
from agent.analysis.watch import Tick
from agent.snapshot import Snapshot, SnapshotHub
from tests.analysis.recording import Recording, profile, record


def _snapshots(path: Path, scenario: str, seconds: int = 12) -> list[Snapshot]:
    hub = SnapshotHub()
    snaps: list[Snapshot] = []
    hub.subscribe(snaps.append)
    record(
        path, Recording(scenario, seconds, host=profile(workers=7)), lambda now, s: None, hub=hub
    )
    return snaps


class _ValueByValue(Tick):
    """A tick that never builds arrays: every view reads value by value, as before them."""

    @property
    def arrays(self):  # type: ignore[override]
        return None


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(x) and math.isnan(b[k])) or x == b[k] for k, x in a.items()
    )


def test_accel_columns_read_through_arrays_equal_the_value_by_value_reads(tmp_path):
    columns = sorted({c for s in accelerator_plan().sources for c in s.columns})
    previous = None
    compared = 0
    for snap in _snapshots(tmp_path / "t.duckdb", "throttled-thermal"):
        fast, slow = Tick(snap, previous=previous), _ValueByValue(snap)
        assert fast.arrays is not None
        for column in columns:
            assert _same(fast.accel(column), slow.accel(column)), column
            assert _same(fast.accel(column, fast.devices), slow.accel(column, slow.devices))
            compared += bool(fast.accel(column))
        assert fast.processes == slow.processes
        assert fast.process_cpu("worker") == slow.process_cpu("worker")
        previous = fast.arrays
    assert compared > 100  # the columns were there to compare, rates included


def test_a_tick_after_a_missed_one_rates_its_counters_against_its_own_previous_tick(tmp_path):
    snaps = _snapshots(tmp_path / "t.duckdb", "healthy", seconds=6)
    older = Tick(snaps[1]).arrays  # not snaps[-1].previous: the arrays must not be reused
    fast, slow = Tick(snaps[-1], previous=older), _ValueByValue(snaps[-1])
    assert _same(fast.accel("host_rx"), slow.accel("host_rx")) and fast.accel("host_rx")
