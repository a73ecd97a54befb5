"""``accelwatch report``: summary, findings, formats, errors; and storing post-run findings."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from agent.analysis.engine import analyze_run
from agent.analysis.finding import load_findings
from agent.app.cli import main
from agent.model import BatchBuilder
from agent.report import render_run_text
from agent.store import connect
from tests.analysis.recording import Recording

RUN_S = 90


def _energy_with_reset(t: float, b: BatchBuilder) -> None:
    """One GPU drawing 500 W; its energy counter resets (driver reload) at 40 s."""
    joules = 500.0 * t if t < 40 else 500.0 * (t - 40)
    b.add_many("gpu0", {"gpu.utilization": 0.9, "gpu.energy": joules})


@pytest.fixture
def thermal(recorded):
    return recorded("throttled-thermal", Recording("throttled-thermal", RUN_S))


def test_text_report_summarises_the_run_and_lists_findings(thermal, capsys):
    db, run_id = thermal
    assert main(["report", "--db", db]) == 0  # the latest run by default
    out = capsys.readouterr().out
    assert "8 GPU(s): NVIDIA H100 80GB HBM3" in out
    assert re.search(r"energy\s+0\.\d+ kWh", out)
    assert "GPU utilization  p50 97%" in out
    assert "CRITICAL Thermal or power throttling [throttling] on gpu2, gpu3 (2)" in out
    assert "Time lost by cause" in out


def test_json_report_carries_summary_and_evidence(thermal, capsys):
    db, run_id = thermal
    assert main(["report", run_id, "--db", db, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run"] == run_id and len(doc["summary"]["devices"]) == 8
    rules = {f["rule"] for f in doc["findings"]}
    assert rules == {"throttling"}
    f = doc["findings"][0]
    assert f["evidence"]["windows"] and f["evidence"]["threshold"]
    assert 0 < doc["summary"]["lost_share"]["throttling"] < 0.5


def test_markdown_report_has_tables(thermal, capsys):
    db, _ = thermal
    assert main(["report", "throttled-thermal", "--db", db, "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# accelwatch report") and "| gpu0 |" in out


def test_html_report_is_self_contained_with_shaded_windows(thermal, tmp_path):
    db, _ = thermal
    out = tmp_path / "r.html"
    assert main(["report", "--db", db, "--format", "html", "--out", str(out)]) == 0
    page = out.read_text()
    assert "<script" not in page and not re.search(r"(src|href)=\"https?:", page)
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) >= 6
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    assert "GPU utilization" in page and "SM clock" in page
    shaded = re.findall(r'<rect [^>]*opacity="0.16"><title>throttling on gpu2', page)
    assert shaded


def test_unknown_run_is_a_one_line_error(thermal, capsys):
    db, _ = thermal
    assert main(["report", "no-such-run", "--db", db]) == 2
    err = capsys.readouterr().err
    assert err.startswith("accelwatch: error: no run 'no-such-run'") and err.count("\n") == 1


def test_missing_database_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "nope.duckdb")]) == 4
    assert "accelwatch: error:" in capsys.readouterr().err


def test_energy_is_reset_safe(recorded, capsys):
    db, run_id = recorded(
        "energy-reset",
        Recording(None, RUN_S, with_host=False, extra=[("nvml", _energy_with_reset)]),
    )
    assert main(["report", run_id, "--db", db, "--json"]) == 0
    kwh = json.loads(capsys.readouterr().out)["summary"]["energy_kwh"]
    # 500 W over the 89 s between the first and last sample, across the reset
    assert kwh == pytest.approx(500 * 89 / 3.6e6, rel=0.03)


def _utilization_ramp(t: float, b: BatchBuilder) -> None:
    """One GPU whose utilization climbs evenly from 0 to 1 over the ticks at 1..RUN_S s."""
    b.add_many("gpu0", {"gpu.utilization": (t - 1) / (RUN_S - 1)})


def test_device_summary_puts_each_utilization_percentile_in_its_own_field(recorded, capsys):
    db, run_id = recorded(
        "utilization-ramp",
        Recording(None, RUN_S, with_host=False, extra=[("nvml", _utilization_ramp)]),
    )
    assert main(["report", run_id, "--db", db, "--json"]) == 0
    (device,) = json.loads(capsys.readouterr().out)["summary"]["devices"]
    assert device["entity"] == "gpu0" and device["name"] == "gpu0"
    assert device["util_mean"] == pytest.approx(0.5)
    assert device["util_p50"] == pytest.approx(0.5)
    assert device["util_p90"] == pytest.approx(0.9)
    assert device["util_p99"] == pytest.approx(0.99)
    assert device["energy_kwh"] is None  # no energy counter recorded


def test_render_run_text_stores_post_run_findings_replacing_earlier_ones(recorded, tmp_path):
    import shutil

    src, run_id = recorded("hang", Recording("hang", RUN_S))
    db = tmp_path / "copy.duckdb"
    shutil.copy(src, db)
    text = render_run_text(db, run_id)
    assert "WARNING Hang [hang] on job" in text
    con = connect(db)
    try:
        first = load_findings(con, run_id)
        analyze_run(con, run_id)  # again: replaces, never duplicates
        assert [f.rule for f in load_findings(con, run_id)] == [f.rule for f in first] == ["hang"]
        assert con.execute("SELECT count(*) FROM findings WHERE live").fetchone()[0] == 0
    finally:
        con.close()


def test_cpu_only_report(recorded, capsys):
    db, run_id = recorded("cpu-only-quiet", Recording(None, RUN_S))
    assert main(["report", run_id, "--db", db]) == 0
    out = capsys.readouterr().out
    assert "CPU only" in out and "no accelerator" in out and "No bottleneck found" in out


def test_time_lost_by_cause_counts_each_second_once(recorded, capsys):
    """Idle GPUs fed by a saturated loader are one loss, not two: the cause (dataloader-bound)
    takes the seconds the symptom (gpu-starvation) also covers."""
    from tests.analysis.test_host_rules import after, profile

    db, run_id = recorded(
        "loader", Recording("input-bound", RUN_S, host=profile(worker_cpu=after(5, 1.0, 0.4)))
    )
    assert main(["report", run_id, "--db", db, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rules = {f["rule"] for f in out["findings"]}
    assert {"dataloader-bound", "gpu-starvation"} <= rules  # both found, as before
    share = out["summary"]["lost_share"]
    assert share["dataloader-bound"] > 0.2
    assert share.get("gpu-starvation", 0.0) < 0.05
    assert sum(share.values()) <= 1.0


def test_lost_by_cause_gives_overlap_to_the_cause_and_keeps_the_rest_of_the_symptom():
    from datetime import datetime, timedelta

    from agent.analysis.finding import Finding
    from agent.report_summary import lost_by_cause

    t0 = datetime(2026, 1, 1)

    def finding(rule: str, start: int, end: int, lost: float) -> Finding:
        a, b = t0 + timedelta(seconds=start), t0 + timedelta(seconds=end)
        windows = [[a.isoformat(), b.isoformat()]]
        return Finding(rule, "warning", "host", a, b, "", "", {"windows": windows}, lost)

    lost = lost_by_cause(
        [finding("gpu-starvation", 0, 100, 50.0), finding("dataloader-bound", 20, 60, 20.0)]
    )
    assert lost["dataloader-bound"] == pytest.approx(20.0)
    assert lost["gpu-starvation"] == pytest.approx(50.0 * 60 / 100)


def test_report_on_a_read_only_database_writes_nothing(recorded, tmp_path, capsys):
    """Reading a run never writes: a chmod 0400 file is reported on and stays byte-identical
    (no findings stored, no WAL created), and analysing it in memory still finds the hang."""
    import hashlib
    import os
    import shutil

    src, run_id = recorded("hang", Recording("hang", RUN_S))
    db = tmp_path / "ro.duckdb"
    shutil.copy(src, db)
    con = connect(db)  # as if never analysed (other tests may have stored findings in src)
    con.execute("DELETE FROM findings")
    con.execute("CHECKPOINT")
    con.close()
    os.chmod(db, 0o400)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    files = sorted(p.name for p in tmp_path.iterdir())
    try:
        assert main(["report", run_id, "--db", str(db), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [f["rule"] for f in out["findings"]] == ["hang"]
        assert out["findings_from"] == "analysed"
        assert main(["report", run_id, "--db", str(db), "--format", "html"]) == 0
        assert "<svg" in capsys.readouterr().out
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == files  # no WAL, nothing new
    finally:
        os.chmod(db, 0o600)


def test_report_shows_stored_post_run_findings_without_analysing_again(recorded, tmp_path):
    import shutil

    from agent.report import build_report
    from agent.runs import open_read

    src, run_id = recorded("hang", Recording("hang", RUN_S))
    db = tmp_path / "stored.duckdb"
    shutil.copy(src, db)
    render_run_text(db, run_id)  # what the recording agent does when the run ends
    reader = open_read(db)
    try:
        report = build_report(reader, run_id, str(db))
    finally:
        reader.close()
    assert report.findings_from == "stored"
    assert [f.rule for f in report.findings] == ["hang"]


def test_summary_read_beside_the_analysis_equals_the_summary_read_alone(thermal, tmp_path):
    """An unanalysed run's summary is read on a second cursor while the rules run; a run with
    stored findings reads it alone, after them: both give the same numbers."""
    import shutil
    from dataclasses import asdict

    from agent.report import build_report
    from agent.runs import open_read

    src, run_id = thermal
    db = tmp_path / "copy.duckdb"
    shutil.copy(src, db)

    def summary() -> tuple[str, dict]:
        reader = open_read(db)
        try:
            report = build_report(reader, run_id, str(db))
        finally:
            reader.close()
        # lost_share comes from the findings (stored ones are rounded), not from the scan
        return report.findings_from, {**asdict(report.summary), "lost_share": None}

    beside_from, beside = summary()
    render_run_text(db, run_id)  # stores the post-run findings
    alone_from, alone = summary()
    assert (beside_from, alone_from) == ("analysed", "stored")
    assert len(beside["devices"]) == 8 and beside["energy_kwh"] > 0
    # DuckDB's parallel sums may add in another order: equal to the last few ulps
    assert _rounded(beside) == _rounded(alone)


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def test_after_scan_is_called_once_the_samples_are_aggregated_before_the_pivots(thermal):
    """The report starts its summary's read there: the raw scan is over, the rest is small."""
    db, run_id = thermal
    con = connect(db, read_only=True)
    seen: list[set[str]] = []

    def tables() -> set[str]:
        rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
        return {r[0] for r in rows}

    try:
        findings = analyze_run(con, run_id, store=False, after_scan=lambda: seen.append(tables()))
    finally:
        con.close()
    assert len(seen) == 1
    assert "aw_agg" in seen[0] and "aw_accel" not in seen[0]
    assert {f.rule for f in findings} == {"throttling"}
