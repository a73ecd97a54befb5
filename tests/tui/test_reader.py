"""The reader interface: live frames from the hub, recorded frames at a cursor, history."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import StoreError
from agent.reader import Finding, order_findings, rank_label
from agent.recorded import RecordedReader, RunNotFoundError
from tests.tui.synthetic import ROOT_PID, feed


def test_live_frame_carries_latest_tick_recent_values_and_findings(live):
    session, reader, job = live
    reader.track({"gpu.utilization"})
    for tick in range(12, 16):
        feed(session, job, tick)
    frame = reader.frame(window_s=60)
    assert frame.snapshot.ts == job.ts(15)
    np.testing.assert_allclose(frame.recent[("gpu0", "gpu.utilization")], [0.92, 0.93, 0.94, 0.90])
    assert [f.rule for f in frame.findings] == ["gpu_thermal_throttle"]
    assert frame.health["samples"] == session.store.rows_written > 0


def test_live_recent_window_drops_values_older_than_the_window(live):
    session, reader, job = live
    reader.track({"gpu.utilization"})
    for tick in range(12, 22):
        feed(session, job, tick)
    assert len(reader.frame(window_s=3).recent[("gpu0", "gpu.utilization")]) == 3


def test_history_turns_counters_into_rates(live):
    session, reader, job = live
    series = reader.history(str(ROOT_PID + 1), "process.io.read_bytes", job.ts(2), job.ts(11))
    assert len(series) == 10
    np.testing.assert_allclose(series.values, 21 * 2**20)
    gauge = reader.history("gpu0", "gpu.utilization", job.ts(5), job.ts(6))
    np.testing.assert_allclose(gauge.values, [0.90, 0.91])


def test_recorded_reader_rebuilds_snapshot_with_rates_at_the_cursor(recorded_reader, recorded):
    _, job = recorded
    reader = recorded_reader
    assert len(reader.ticks) == 30 and reader.cursor == 29
    reader.seek_index(5)
    reader.track({"gpu.utilization"})
    frame = reader.frame(window_s=3)
    assert frame.snapshot.ts == job.ts(5)
    assert frame.snapshot.rate(str(ROOT_PID + 1), "process.io.read_bytes") == 21 * 2**20
    assert frame.snapshot.entity_attrs["gpu0"]["used_by_job"] is True
    np.testing.assert_allclose(frame.recent[("gpu0", "gpu.utilization")], [0.93, 0.94, 0.90])


def test_recorded_findings_appear_once_started_and_cursor_jumps_between_them(
    recorded_reader, recorded
):
    _, job = recorded
    reader = recorded_reader
    reader.seek_index(0)
    assert reader.frame(60).findings == []
    assert reader.next_finding(1) == 10
    assert [f.rule for f in reader.frame(60).findings] == ["gpu_thermal_throttle"]
    assert reader.next_finding(1) == 20
    assert [f.severity for f in reader.frame(60).findings] == ["critical", "warning"]
    assert reader.next_finding(1) == 20  # no later finding: stay
    assert reader.next_finding(-1) == 10


def test_unknown_run_and_missing_db_are_one_line_errors(recorded, tmp_path):
    with pytest.raises(RunNotFoundError, match="no run 'nope'"):
        RecordedReader.open(recorded[0], "nope")
    with pytest.raises(StoreError, match="no database"):
        RecordedReader.open(str(tmp_path / "missing.duckdb"))


def test_run_is_found_by_name_or_id(recorded):
    for key in ("run-synthetic", "llama-finetune", None):
        reader = RecordedReader.open(recorded[0], key)
        assert reader.run.run_id == "run-synthetic"
        assert reader.run.env["WORLD_SIZE"] == "8"
        reader.close()


def test_findings_order_is_severity_then_newest():
    raw = [
        {"rule": "a", "severity": "info", "start_ts": 30.0},
        {"rule": "b", "severity": "critical", "start_ts": 10.0},
        {"rule": "c", "severity": "warning", "start_ts": "2023-11-14T22:13:40"},
        {"rule": "d", "severity": "critical", "start_ts": 20.0, "evidence": '{"x": 1}'},
    ]
    ordered = order_findings(Finding.from_mapping(r) for r in raw)
    assert [f.rule for f in ordered] == ["d", "b", "c", "a"]
    assert ordered[0].evidence == {"x": 1}


def test_rank_label_reads_torchrun_and_slurm_variables():
    assert rank_label({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == "rank 3/8 (local 1)"
    assert rank_label({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}) == "rank 2/4"
    assert rank_label({}) == ""


def test_one_finding_type_with_one_severity_order():
    """The analysis, the store, the report and the viewers share one Finding (worst first)."""
    from datetime import datetime

    import agent.analysis.finding as analysis_finding

    assert Finding is analysis_finding.Finding
    rank = analysis_finding.SEVERITY_RANK
    assert rank["info"] < rank["warning"] < rank["critical"]
    made = Finding("r", "critical", "gpu0", datetime(2026, 1, 1), None, "s", "n", {}, 3.0)
    back = Finding.from_mapping(made.to_dict())
    assert back == made and back.end_ts is None
    assert analysis_finding.sort_findings([made.as_live(), back])[0].severity == "critical"
