"""Synchronous training: every rank's step time is equal (all wait for the slowest), so the
straggler is found by its forward/backward compute against its pipeline stage's peers in an op
trace, with what it cost the job; without an op trace, the device signals stand in."""

from __future__ import annotations

import json

import pytest

from agent.app.cli import main
from tests.imports.traces import sync_op_trace, write_table


def report_of(tmp_path, capsys, **kw) -> tuple[dict, float, float]:
    cols, lost, job_s = sync_op_trace(**kw)
    path = write_table(tmp_path / "trace.parquet", cols)
    db = str(tmp_path / "sync.duckdb")
    assert main(["import", str(path), "--run", "sync", "--db", db]) == 0
    capsys.readouterr()
    assert main(["report", "sync", "--db", db, "--json"]) == 0
    return json.loads(capsys.readouterr().out), lost, job_s


def test_slow_backward_of_one_rank_is_the_straggler_with_the_job_time_it_cost(tmp_path, capsys):
    report, lost, job_s = report_of(tmp_path, capsys, slow_rank=5, slow_backward=1.8)
    (f,) = report["findings"]
    ev = f["evidence"]
    assert f["rule"] == "straggler" and f["entity"] == "rank5"
    assert ev["kind"] == "compute" and ev["stage"] == 1 and ev["dp_rank"] == 1
    assert ev["steps"] == [20, 59]
    assert ev["by_optype"]["backward-compute"] == pytest.approx(1.8, abs=0.05)
    assert ev["by_optype"]["forward-compute"] == pytest.approx(1.0, abs=0.05)
    assert f["lost_s"] == pytest.approx(lost, rel=0.1)  # what the generator's job waited
    assert ev["job_lost_share"] == pytest.approx(lost / job_s, rel=0.1)
    assert f["severity"] == "critical"  # compute score 0.65 < 0.7
    assert "stage 1, dp rank 1" in f["summary"] and "steps 20-59" in f["summary"]
    assert "backward-compute 78% slower than its peers" in f["summary"]


def test_synchronous_job_without_a_slow_rank_has_no_straggler(tmp_path, capsys):
    report, _, _ = report_of(tmp_path, capsys, slow_rank=None)
    assert report["findings"] == []


def test_a_mildly_slow_rank_is_a_warning(tmp_path, capsys):
    report, lost, _ = report_of(tmp_path, capsys, slow_rank=2, slow_backward=1.35)
    (f,) = report["findings"]
    assert f["entity"] == "rank2" and f["severity"] == "warning"
    assert f["evidence"]["relative_score"] == pytest.approx(1 / (1 + 2 / 3 * 0.35), abs=0.03)
    assert f["lost_s"] == pytest.approx(lost, rel=0.15)


def test_equal_step_times_without_an_op_trace_fall_back_to_device_signals(tmp_path):
    from agent.analysis.engine import analyze_run
    from agent.store import connect
    from tests.analysis.recording import Recording, record, step_log

    db, run_id = record(
        tmp_path / "dev.duckdb",
        Recording("straggler", 120, extra=[step_log(lambda rank, t: 0.5, 8)]),
    )
    con = connect(db)
    try:
        found = [f for f in analyze_run(con, run_id) if f.rule.startswith(("straggler", "rank-"))]
    finally:
        con.close()
    assert [(f.rule, f.entity, f.evidence["kind"]) for f in found] == [
        ("straggler", "gpu5", "device")
    ]
    assert "lags its peers from" in found[0].summary and "UTC" in found[0].summary
