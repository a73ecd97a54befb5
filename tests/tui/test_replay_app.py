"""Replay: the same screen over a recorded run, a time cursor, jumps between findings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import StoreError
from agent.recorded import RecordedReader, RunNotFoundError
from tests.helpers import run_cli
from tests.tui.screen import async_test, screen_text
from tests.tui.synthetic import SyntheticJob, end_session, synthetic_session
from tui.replay import ReplayApp, run_replay
from tui.widgets.cursor import TimeCursor
from tui.widgets.findings import EvidenceScreen, FindingsTable
from tui.widgets.gpu import GpuCard


async def _settle(pilot) -> None:
    await pilot.pause(0.05)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@async_test
async def test_replay_opens_at_the_end_and_scrubs_tick_by_tick(recorded_reader, recorded):
    _, job = recorded
    app = ReplayApp(recorded_reader)
    async with app.run_test(size=(120, 40)) as pilot:
        await _settle(pilot)
        assert app.frame.snapshot.ts == job.ts(29)
        text = screen_text(app)
        assert "REPLAY" in text and "tick 30/30" in text and "findings (2)" in text
        assert app.query_one("#card-gpu0", GpuCard).has_class("-throttled")
        await pilot.press("left", "left")
        await _settle(pilot)
        assert app.frame.snapshot.ts == job.ts(27) and "tick 28/30" in screen_text(app)
        await pilot.press("home")
        await _settle(pilot)
        assert app.frame.snapshot.ts == job.ts(0)
        assert "no findings so far" in screen_text(app)
        await pilot.press("shift+right")
        await _settle(pilot)
        assert recorded_reader.cursor == 3
        cursor = app.query_one(TimeCursor)
        pad = cursor.content_region.x - cursor.region.x
        await pilot.click(TimeCursor, offset=(pad + cursor.content_size.width // 2, 0))
        await _settle(pilot)
        assert recorded_reader.cursor in (14, 15)  # the middle of 30 ticks
        await pilot.press("q")


@async_test
async def test_findings_are_jumped_to_and_evidence_jumps_the_cursor(recorded_reader, recorded):
    _, job = recorded
    app = ReplayApp(recorded_reader)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("home")
        await _settle(pilot)
        await pilot.press("right_square_bracket")
        await _settle(pilot)
        assert recorded_reader.cursor == 10
        assert [f.rule for f in app.query_one(FindingsTable).findings] == ["gpu_thermal_throttle"]
        await pilot.press("right_square_bracket")
        await _settle(pilot)
        assert recorded_reader.cursor == 20
        findings = app.query_one(FindingsTable).findings
        assert [f.severity for f in findings] == ["critical", "warning"]  # most severe first
        await pilot.press("f", "down", "enter")
        await _settle(pilot)
        assert isinstance(app.screen, EvidenceScreen)
        assert app.screen.finding.rule == "gpu_thermal_throttle"
        assert "Check cooling." in screen_text(app)
        await pilot.press("j")
        await _settle(pilot)
        assert recorded_reader.cursor == 10
        await pilot.press("question_mark")
        await _settle(pilot)
        help_text = screen_text(app)
        assert "Next finding" in help_text and "time cursor, when focused" in help_text
        await pilot.press("escape", "q")


@async_test
async def test_play_advances_the_cursor_and_pauses(recorded_reader):
    app = ReplayApp(recorded_reader)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("end", "p")  # at the end, play restarts from the start
        for _ in range(50):  # a tick every 0.25 s; allow for a busy machine
            await pilot.pause(0.1)
            if recorded_reader.cursor >= 2:
                break
        assert app.playing and 2 <= recorded_reader.cursor < 29
        assert "▶ REPLAY" in screen_text(app)
        await pilot.press("p")
        stopped_at = recorded_reader.cursor
        await pilot.pause(0.4)
        assert not app.playing and recorded_reader.cursor == stopped_at
        await pilot.press("q")


def test_run_replay_errors_before_opening_the_ui(recorded, tmp_path):
    with pytest.raises(RunNotFoundError):
        run_replay(recorded[0], "no-such-run")
    with pytest.raises(StoreError):
        run_replay(str(tmp_path / "absent.duckdb"), None)


def test_view_command_reports_unknown_run_in_one_line(recorded, tmp_path):
    result = run_cli("view", "no-such-run", "--db", recorded[0])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"accelwatch: error: no run 'no-such-run' in {recorded[0]} "
        f"(see `accelwatch runs --db {recorded[0]}`)"
    ]
    missing = run_cli("view", "--db", str(tmp_path / "absent.duckdb"))
    assert missing.returncode == 4 and "no database" in missing.stderr


def test_a_database_held_by_a_process_that_serves_no_readers_is_one_line(recorded, tmp_path):
    """DuckDB allows one process per file while it is written; a holder that is not an
    accelwatch agent (no read socket) is named in one line, exit 4."""
    db = tmp_path / "busy.duckdb"
    shutil.copy(recorded[0], db)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from agent.store import connect; c = connect(sys.argv[1]); "
                "print('held', flush=True); time.sleep(30)"
            ),
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli("view", "--db", str(db))
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 4
    assert len(result.stderr.strip().splitlines()) == 1
    assert "does not serve readers" in result.stderr


def test_view_without_a_terminal_exits_2_in_one_line_at_once(recorded):
    """Textual without a terminal would write escape codes forever."""
    result = run_cli("view", "--db", recorded[0], timeout=20, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "accelwatch: error: view needs a terminal (stdin and stdout); in scripts use "
        "`accelwatch report` or `accelwatch sql`"
    ]
    assert result.stdout == ""


def test_finding_jump_lands_on_the_first_tick_showing_the_finding(tmp_path):
    """Findings start at bucket edges, ticks fall between them: ``]`` lands on the first tick
    at or after the start (where the finding is listed), not the one before it."""
    from tests.tui.conftest import write_findings

    job = SyntheticJob(gpus=2, used=1, throttled=True)
    db = str(tmp_path / "offset.duckdb")
    end_session(synthetic_session(db, job, 30, with_child=False))
    write_findings(db, "run-synthetic", job)
    reader = RecordedReader.open(db)
    try:
        # Shift the finding starts a little after their tick, as a bucket edge would be.
        reader.findings = [
            type(f)(**{**f.__dict__, "start": f.start.replace(microsecond=300_000)})
            for f in reader.findings
        ]
        reader.seek_index(0)
        index = reader.next_finding(1)
        assert index == 11
        assert reader.cursor_ts >= reader.finding_times()[0]
        assert [f.rule for f in reader.frame(60).findings] == ["gpu_thermal_throttle"]
    finally:
        reader.close()


@async_test
async def test_a_run_without_samples_opens_and_says_so(tmp_path):
    db = str(tmp_path / "empty.duckdb")
    end_session(synthetic_session(db, SyntheticJob(), 0, with_child=False))
    reader = RecordedReader.open(db)
    try:
        app = ReplayApp(reader)
        async with app.run_test() as pilot:
            await _settle(pilot)
            assert "this run recorded no samples" in screen_text(app)
            await pilot.press("right", "right_square_bracket", "p", "g")
            await _settle(pilot)
            await pilot.press("q")
    finally:
        reader.close()
