"""Stragglers from real per-worker mini-batch times (Alibaba PAI, see tests/data/) and the
step-time importer."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.analysis.engine import analyze_run
from agent.analysis.steps import StepColumns, StepImportError, import_step_times, main
from agent.store import connect
from tests.analysis.expect import of_rule
from tests.analysis.recording import Recording, record, step_log

DATA = Path(__file__).resolve().parents[1] / "data" / "alibaba-pai-minibatch"
PAI = StepColumns(rank="worker", time="time", value="batch_time_norm")


def analysed_job(tmp_path: Path, job: int):
    db = tmp_path / f"job{job}.duckdb"
    run_id, written = import_step_times(db, DATA / f"job_{job}_norm.csv", columns=PAI, scale=0.001)
    con = connect(db)
    try:
        started = con.execute(
            "SELECT epoch(started) FROM runs WHERE run_id = ?", [run_id]
        ).fetchone()[0]
        return analyze_run(con, run_id), started, written
    finally:
        con.close()


def test_persistent_spread_is_not_a_straggler(tmp_path):
    findings, _, written = analysed_job(tmp_path, 2)
    assert written == 2402
    assert of_rule(findings, "straggler") == []
    assert findings == []


def test_workers_that_slow_down_mid_run_are_stragglers(tmp_path):
    findings, started, _ = analysed_job(tmp_path, 3)
    stragglers = of_rule(findings, "straggler")
    assert {f.entity for f in stragglers} == {"rank6", "rank7", "rank8", "rank9"}
    for f in stragglers:
        assert 2100 <= f.start.timestamp() - started <= 2350  # the jump is at about 2150 s
        assert f.evidence["signal"] == "step.time"
        assert f.evidence["individual_score"] < 0.85
        assert f.severity == "warning"  # 20-40% slower: above resiliency-ext's 0.7 score


def test_far_slower_rank_is_a_critical_straggler(tmp_path):
    def times(rank: int, t: float) -> float:
        return 0.5 * (2.0 if rank == 2 and t >= 60 else 1.0)

    db, run_id = record(
        tmp_path / "s.duckdb", Recording(None, 300, with_host=False, extra=[step_log(times, 4)])
    )
    con = connect(db)
    try:
        (f,) = of_rule(analyze_run(con, run_id), "straggler")
    finally:
        con.close()
    assert f.entity == "rank2" and f.severity == "critical"
    assert f.evidence["relative_score"] == pytest.approx(0.5, abs=0.05)


def test_ranks_that_stop_stepping_are_a_hang(tmp_path):
    def times(rank: int, t: float) -> float | None:
        return None if 100 <= t < 200 else 0.4

    db, run_id = record(
        tmp_path / "h.duckdb", Recording(None, 300, with_host=False, extra=[step_log(times, 4)])
    )
    con = connect(db)
    try:
        (f,) = of_rule(analyze_run(con, run_id), "hang")
    finally:
        con.close()
    assert f.entity == "job" and f.evidence["kind"] == "no_steps"
    assert f.evidence["longest_s"] == pytest.approx(100, abs=2)


def test_import_into_an_existing_run_by_name(tmp_path, capsys):
    db, run_id = record(tmp_path / "r.duckdb", Recording(None, 30))
    csv = tmp_path / "steps.csv"
    csv.write_text("rank,time,step_time\n0,1,0.5\n1,1,0.52\n0,2,0.5\n1,2,0.51\n")
    assert main([str(csv), "--db", str(db), "--run", "cpu-only"]) == 0
    assert "imported 4 step times into run run-1" in capsys.readouterr().out
    con = connect(db)
    try:
        rows = con.execute(
            "SELECT entity, count(*) FROM samples WHERE source = 'steps' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    assert rows == [("rank0", 2), ("rank1", 2)]


def test_import_errors_are_one_line(tmp_path, capsys):
    db, _ = record(tmp_path / "e.duckdb", Recording(None, 5))
    assert main([str(tmp_path / "missing.csv"), "--db", str(db)]) == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(StepImportError):
        import_step_times(db, bad)
    assert main([str(bad), "--db", str(db), "--run", "nope"]) == 1
    assert capsys.readouterr().err.count("accelwatch: error:") == 2
