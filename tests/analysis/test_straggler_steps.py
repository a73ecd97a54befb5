"""Stragglers from per-rank step times, as operators see them: emerging stragglers, a
persistent spread, a rank changing speed. Real Alibaba PAI traces (tests/data/) and synthetic
ones, each through ``accelwatch import`` and ``accelwatch report --json``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from agent.app.cli import main
from tests.imports.traces import step_times, write_table

DATA = Path(__file__).resolve().parents[1] / "data" / "alibaba-pai-minibatch"


def imported_report(tmp_path: Path, capsys, trace: Path, name: str = "job") -> dict:
    db = str(tmp_path / f"{name}.duckdb")
    assert main(["import", str(trace), "--run", name, "--db", db]) == 0
    capsys.readouterr()
    assert main(["report", name, "--db", db, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def findings(report: dict, rule: str) -> list[dict]:
    return [f for f in report["findings"] if f["rule"] == rule]


def synthetic(tmp_path: Path, capsys, **kw) -> dict:
    path = write_table(tmp_path / "steps.csv", step_times(**kw))
    return imported_report(tmp_path, capsys, path)


# -- real data -------------------------------------------------------------------------------


def test_job_2_is_one_persistent_spread_and_no_straggler(tmp_path, capsys):
    report = imported_report(tmp_path, capsys, DATA / "job_2_norm.csv", "job2")
    assert findings(report, "straggler") == [] and findings(report, "rank-speed-change") == []
    (spread,) = findings(report, "rank-spread")
    assert spread["entity"] == "job" and spread["severity"] == "warning"
    medians = spread["evidence"]["rank_median_step_time"]
    assert min(medians.values()) == pytest.approx(686, abs=2)  # worker 1
    assert max(medians.values()) == pytest.approx(906, abs=2)  # worker 5
    groups = spread["evidence"]["groups"]
    assert groups["slower"] == ["rank5"] and set(groups["faster"]) == {"rank0", "rank1", "rank2"}
    assert "from 686 (rank1) to 906 (rank5)" in spread["summary"]


def test_job_3_workers_6_to_9_emerge_at_2150_s_and_0_1_are_persistently_slower(tmp_path, capsys):
    report = imported_report(tmp_path, capsys, DATA / "job_3_norm.csv", "job3")
    emerging = {f["entity"]: f for f in findings(report, "straggler")}
    assert set(emerging) == {"rank6", "rank7", "rank8", "rank9"}
    for f in emerging.values():
        ev = f["evidence"]
        assert ev["kind"] == "emerging" and ev["signal"] == "step.time"
        assert 2120 <= ev["t_start_s"] <= 2260  # the publisher saw the jump at about 2150 s
        assert ev["t_end_s"] >= 2470  # ... lasting to the end of the trace (2481 s)
        assert 0.15 <= ev["slower_than_peers"] <= 0.40  # 20-40% slower
        assert f["severity"] == "warning"  # relative score above resiliency-ext's 0.7
        assert f["lost_s"] > 0
    assert min(f["evidence"]["t_start_s"] for f in emerging.values()) == pytest.approx(2150, abs=30)
    (spread,) = findings(report, "rank-spread")
    assert spread["evidence"]["groups"]["slower"] == ["rank0", "rank1"]
    assert spread["evidence"]["groups"]["faster"] == []
    for rank in ("rank0", "rank1"):
        assert spread["evidence"]["slower_than_peers"][rank] == pytest.approx(0.10, abs=0.02)
    assert "ranks 0 and 1 are 10% slower than the median of their peers" in spread["summary"]
    assert findings(report, "rank-speed-change") == []


def test_findings_on_an_imported_trace_use_its_time_axis(tmp_path, capsys):
    db = str(tmp_path / "j3.duckdb")
    assert main(["import", str(DATA / "job_3_norm.csv"), "--run", "job3", "--db", db]) == 0
    capsys.readouterr()
    assert main(["report", "job3", "--db", db]) == 0
    text = capsys.readouterr().out
    assert re.search(r"rank6 became a straggler from t = 2,1\d\d s to t = 2,48\d s", text)
    assert re.search(r"\[straggler\] on rank6: t = 2,1\d\d-2,48\d s", text)
    assert "1970" not in text and "UTC" not in text  # no wall clock on a trace's own axis
    assert main(["report", "job3", "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["time_axis"] == "trace"


# -- synthetic -------------------------------------------------------------------------------


def test_rank_at_twice_its_peers_for_three_minutes_is_an_emerging_straggler(tmp_path, capsys):
    def slow(r, t):
        return np.where((r == 3) & (t >= 1800) & (t < 1980), 2.0, 1.0)

    report = synthetic(tmp_path, capsys, ranks=8, seconds=3600, every=10, factor=slow)
    (f,) = findings(report, "straggler")
    ev = f["evidence"]
    assert f["entity"] == "rank3" and f["severity"] == "critical"  # relative score 0.5 < 0.7
    assert ev["t_start_s"] == pytest.approx(1800, abs=10)
    assert ev["t_end_s"] == pytest.approx(1980, abs=10)
    assert ev["relative_score"] == pytest.approx(0.5, abs=0.05)
    assert f["lost_s"] == pytest.approx(90, rel=0.15)  # 180 s at half speed
    assert re.search(r"from t = 1,8\d\d s to t = 1,9\d\d s", f["summary"])
    assert re.search(r"(9\d% slower than|2\.0x as slow as) the median of its peers", f["summary"])
    assert findings(report, "rank-spread") == []


def test_equal_ranks_give_no_straggler_finding(tmp_path, capsys):
    report = synthetic(tmp_path, capsys, ranks=8, seconds=3600, every=10, noise=0.05)
    assert report["findings"] == []


def test_the_whole_fleet_slowing_down_is_not_a_straggler(tmp_path, capsys):
    def everyone(r, t):
        return np.where(t >= 1200, 1.6, 1.0) + 0 * r

    report = synthetic(tmp_path, capsys, ranks=8, seconds=3600, every=10, factor=everyone)
    assert [f["rule"] for f in report["findings"]] == []


def test_a_slow_group_from_the_start_is_one_spread_finding_not_stragglers(tmp_path, capsys):
    def group(r, t):
        return np.where(r < 3, 1.3, 1.0) + 0 * t

    report = synthetic(tmp_path, capsys, ranks=10, seconds=3600, every=10, factor=group)
    assert findings(report, "straggler") == []
    (spread,) = findings(report, "rank-spread")
    assert spread["evidence"]["groups"]["slower"] == ["rank0", "rank1", "rank2"]
    assert "ranks 0-2 are 30% slower than the median of their peers" in spread["summary"]
    assert spread["lost_s"] == pytest.approx(3600 * (1 - 1 / 1.3), rel=0.1)


def test_a_rank_changing_speed_on_top_of_a_persistent_spread_is_found(tmp_path, capsys):
    def spread_then_change(r, t):
        level = np.where(r < 2, 1.10, 1.0)
        return np.where((r == 1) & (t >= 2000), 1.25, level)

    report = synthetic(tmp_path, capsys, ranks=8, seconds=3600, every=10, factor=spread_then_change)
    (change,) = findings(report, "rank-speed-change")
    ev = change["evidence"]
    assert change["entity"] == "rank1" and change["severity"] == "warning"
    assert ev["t_start_s"] == pytest.approx(2000, abs=40) and ev["t_end_s"] >= 3590
    assert ev["vs_own_past"] == pytest.approx(1.25 / 1.10, abs=0.04)
    assert re.search(
        r"from (9|10|11)% slower than the median of its peers to 2[3-6]% slower", change["summary"]
    )
    assert findings(report, "straggler") == []  # 14% slower than before: not a straggler
    (spread,) = findings(report, "rank-spread")
    assert spread["evidence"]["groups"]["slower"] == ["rank0", "rank1"]


def test_slower_wording_never_goes_negative():
    from agent.analysis.rules.straggler_text import ranks_text, slower

    assert slower(1.31) == "31% slower than the median of its peers"
    assert slower(0.98) == "2% faster than the median of its peers"
    assert slower(1.0) == "as fast as the median of its peers"
    assert slower(2.1) == "2.1x as slow as the median of its peers"
    assert ranks_text(["rank0", "rank1", "rank4", "rank5", "rank6"]) == "ranks 0, 1 and 4-6"
