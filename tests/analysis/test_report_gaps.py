"""A hole in the recording (the agent stopped, a tick overran) is shown, not hidden."""

from __future__ import annotations

import json

from agent.app.session_health import recording_health
from agent.model import Event
from agent.report import build_report, render_text
from agent.runs import open_read
from agent.sampler import Sampler
from agent.store import Store
from tests.analysis.recording import T0, Recording, record


def test_report_shows_each_gap_with_its_start_and_length(tmp_path):
    db, run_id = record(tmp_path / "gap.duckdb", Recording("healthy", 60))
    store = Store(db)
    try:
        store.write_events(
            run_id,
            [
                Event(
                    T0 + 41, "gap", "agent", {"start": T0 + 20, "seconds": 20.0, "missed_ticks": 20}
                ),
                Event(
                    T0 + 51, "gap", "agent", {"start": T0 + 48, "seconds": 2.0, "missed_ticks": 2}
                ),
            ],
        )
    finally:
        store.close()
    reader = open_read(db)
    try:
        report = build_report(reader, run_id, str(db))
    finally:
        reader.close()
    assert [(g["seconds"], g["missed_ticks"]) for g in report.summary.gaps] == [
        (20.0, 20),
        (2.0, 2),
    ]
    text = render_text(report)
    assert "gaps             2 in the recording, 22 s unsampled (longest 20 s at" in text
    assert (
        json.loads(json.dumps(report.to_json(), default=str))["summary"]["gaps"][0]["seconds"]
        == 20.0
    )


def test_a_run_without_gaps_says_nothing_of_them(tmp_path):
    db, run_id = record(tmp_path / "nogap.duckdb", Recording("healthy", 30))
    reader = open_read(db)
    try:
        report = build_report(reader, run_id, str(db))
    finally:
        reader.close()
    assert report.summary.gaps == [] and "gaps" not in render_text(report)


def test_the_live_header_names_the_latest_gap(tmp_path):
    clock = [T0]
    sampler = Sampler([], 1.0, clock=lambda: clock[0])
    store = Store(tmp_path / "h.duckdb")
    try:
        assert "sampling.state" not in recording_health(store, None, sampler)
        sampler._reschedule(0.0, 1, 21.5, last_tick_wall=T0)  # woke 20 ticks late
        state = recording_health(store, None, sampler)["sampling.state"]
    finally:
        store.close()
    assert state.startswith("gap of 20 s at ") and state.endswith("(20 ticks missed)")
