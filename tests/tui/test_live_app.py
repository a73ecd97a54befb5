"""Pilot tests of the live UI over a real Session fed synthetic ticks."""

from __future__ import annotations

import asyncio

from agent.app.session import SessionControl
from agent.reader import LiveReader
from agent.store import connect
from tests.tui.screen import async_test, screen_text
from tests.tui.synthetic import ROOT_PID, SyntheticJob, end_session, feed, synthetic_session
from tui.live import LiveApp
from tui.widgets.findings import EvidenceScreen, FindingsTable
from tui.widgets.gpu import GpuCard
from tui.widgets.help import HelpScreen
from tui.widgets.host import HostPanel
from tui.widgets.processes import ProcessTable, row_cells
from tui.widgets.timeseries import Chart, TimeSeriesScreen


async def _settle(pilot, seconds: float = 0.1) -> None:
    """Let messages and history/frame workers finish."""
    await pilot.pause(seconds)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@async_test
async def test_cards_processes_and_findings_show_the_right_values(live):
    session, reader, job = live
    app = LiveApp(reader)
    async with app.run_test(size=(160, 48)) as pilot:
        feed(session, job, 12)
        await _settle(pilot)
        text = screen_text(app)
        assert "llama-finetune" in text and f"pid {ROOT_PID}" in text and "rank 0/8" in text
        assert "05:19" in text  # elapsed = tick 12 - started, from the data's clock
        card = app.query_one("#card-gpu0", GpuCard)
        assert card.has_class("-throttled") and not card.has_class("-unused")
        assert app.query_one("#card-gpu1", GpuCard).has_class("-unused")
        assert "92%" in text and "60.0/80.0 GiB" in text and "650/700 W" in text
        assert "THROTTLED: HW THERMAL" in text and "sm 1200/1980 MHz" in text
        table = app.query_one(ProcessTable)
        assert table.row_count == 3
        root = next(r for r in table.rows if r.pid == ROOT_PID)
        cells = row_cells(root)
        shown = [cells[k] for k in ("pid", "role", "cpu", "rss", "gpu", "read")]
        assert shown == [str(ROOT_PID), "main", "150%", "4.0 GiB", "59.0 GiB", "1.0 MB/s"]
        assert any(all(c in line for c in shown) for line in text.splitlines())
        assert "thermally throttled" in text and "Check the node's cooling" in text
        await pilot.press("q")
    assert session.stop_requested.is_set() and session.stop_reason == "user quit"


@async_test
async def test_keys_pause_toggle_sort_focus_evidence_help_window(live):
    session, reader, job = live
    app = LiveApp(reader)
    async with app.run_test(size=(120, 40)) as pilot:
        await _settle(pilot)
        await pilot.press("p")
        feed(session, job, 12)
        await _settle(pilot)
        assert "PAUSED" in screen_text(app) and app.frame.snapshot.ts == job.ts(11)
        await pilot.press("p")
        await _settle(pilot)
        assert app.frame.snapshot.ts == job.ts(12) and "● REC" in screen_text(app)

        unused = app.query_one("#card-gpu1", GpuCard)
        await pilot.press("d")
        assert not unused.display
        await pilot.press("d")
        assert unused.display

        table = app.query_one(ProcessTable)
        await pilot.press("s")
        assert table.sort_key == "cpu"
        await pilot.press("s", "s", "s")  # rss, gpu_mem, io
        await _settle(pilot)
        assert table.sort_key == "io"
        assert table.rows[0].pid == ROOT_PID + 2

        await pilot.press("w")
        assert app.window_s == 300.0

        await pilot.press("f")
        assert isinstance(app.focused, FindingsTable)
        await pilot.press("enter")
        await _settle(pilot)
        assert isinstance(app.screen, EvidenceScreen)
        evidence = screen_text(app)
        assert "gpu.clock_event.hw_thermal" in evidence and "temperature_c" in evidence
        await pilot.press("escape")
        await pilot.press("question_mark")
        await _settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        help_text = screen_text(app)
        assert "Cycle the process sort" in help_text and "question_mark" not in help_text
        assert "?" in help_text
        await pilot.press("escape")
        await pilot.press("q")


@async_test
async def test_graph_view_charts_history_and_zooms(live):
    session, reader, job = live
    app = LiveApp(reader)
    async with app.run_test(size=(100, 30)) as pilot:
        await _settle(pilot)
        await pilot.click("#card-gpu0")
        await pilot.press("g")
        await _settle(pilot, 0.3)
        screen = app.screen
        assert isinstance(screen, TimeSeriesScreen) and screen.entity == "gpu0"
        chart = screen.query_one(Chart)
        assert chart.metric == "gpu.utilization" and len(chart.series) == 12
        assert "max 94%" in screen_text(app)
        await pilot.press("minus", "down")
        await _settle(pilot, 0.3)
        assert screen.metric == screen.metrics[1] == "gpu.memory.used"
        assert screen.window()[1] - screen.window()[0] == 300.0  # zoomed out from 1 min
        assert "gpu0 · gpu.memory.used" in screen_text(app)
        await pilot.press("escape", "q")


@async_test
async def test_target_exit_ends_the_app_after_the_grace_period(live):
    session, reader, job = live
    app = LiveApp(reader, end_grace_s=0.3)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        session.child.kill()
        for _ in range(40):
            await asyncio.sleep(0.1)
            if app.ended is not None:
                break
        assert "ENDED" in screen_text(app) and "target exited" in screen_text(app)
        await asyncio.sleep(0.6)
        assert app.return_code == 0 and not app.is_running
    assert session.stop_reason == "target exited"


@async_test
async def test_quit_stops_recording_and_the_run_is_finalized(live, tmp_path):
    session, reader, job = live
    app = LiveApp(reader)
    async with app.run_test() as pilot:
        await _settle(pilot)
        await pilot.press("q")
    reader.close()
    session.child.kill()
    run = session.finish()
    assert run.status == "stopped" and run.ended is not None
    con = connect(session.store.path, read_only=True)
    try:
        status, ended = con.execute("SELECT status, ended FROM runs").fetchone()
        samples = con.execute("SELECT count(*) FROM samples").fetchone()[0]
        [reason] = con.execute(
            "SELECT detail->>'reason' FROM events WHERE kind='run_end'"
        ).fetchone()
    finally:
        con.close()
    assert status == "stopped" and ended is not None and samples > 0 and reason == "user quit"


@async_test
async def test_mouse_sorts_by_header_selects_a_process_and_opens_a_finding(live):
    session, reader, job = live
    app = LiveApp(reader)
    async with app.run_test(size=(160, 48)) as pilot:
        await _settle(pilot)
        table = app.query_one(ProcessTable)
        header_x = table.content_region.x - table.region.x
        await pilot.click(ProcessTable, offset=(header_x + 28, 1))  # the RSS header
        await _settle(pilot)
        assert table.sort_key == "rss" and table.rows[0].pid == ROOT_PID
        await pilot.click(ProcessTable, offset=(header_x + 2, 3))  # the second process
        await pilot.press("g")
        await _settle(pilot, 0.3)
        assert isinstance(app.screen, TimeSeriesScreen)
        assert app.screen.entity == str(table.rows[1].pid)
        assert app.screen.metrics[0].startswith("process.")
        await pilot.press("escape")
        await pilot.click(HostPanel)
        await pilot.press("g")
        await _settle(pilot, 0.3)
        assert app.screen.entity == "host" and "host.cpu.utilization" in app.screen.metrics
        await pilot.press("escape")
        await pilot.click(FindingsTable, offset=(40, 2))  # highlights the row...
        await _settle(pilot)
        await pilot.click(FindingsTable, offset=(40, 2))  # ...clicking it again opens it
        await _settle(pilot)
        assert isinstance(app.screen, EvidenceScreen)
        await pilot.press("escape", "q")


@async_test
async def test_no_color_still_marks_throttling_and_severity(live, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    session, reader, job = live
    app = LiveApp(reader)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        assert app.no_color
        text = screen_text(app)
        assert "⚠ HW THERMAL" in text and "▲ WARN" in text and "● REC" in text
        await pilot.press("q")


@async_test
async def test_header_shows_health_in_words_and_hides_internal_counters(live):
    session, reader, job = live
    session.context.publish_health(
        **{
            "otlp.failed_exports": 2,
            "otlp.state": "failing",
            "otlp.error": "collector down: 127.0.0.1:4317",
            "prometheus.scrapes": 7,
            "analysis.cpu_s": 0.0012,
            "analysis.cpu_share": 0.0081,
        }
    )
    app = LiveApp(reader)
    async with app.run_test(size=(160, 48)) as pilot:
        batches = job.batches(12)
        session.store.write_ticks([(session.run.run_id, batches)])
        session.hub.publish(
            job.ts(12),
            batches,
            {
                "ticks": 13,
                "missed_ticks": 1,
                "samples": 0,
                "disabled": {"nvml": "NVMLError: GPU is lost"},
            },
        )
        await _settle(pilot)
        header = screen_text(app).splitlines()[1]
        assert f"{session.store.rows_written:,} samples" in header
        assert "1 missed ticks" in header and "disabled: nvml" in header
        assert "OTLP export: collector down: 127.0.0.1:4317, 2 failed exports" in header
        assert "scrapes" not in header and "cpu_s" not in header and "cpu_share" not in header
        await pilot.press("q")


@async_test
async def test_ctrl_c_stops_recording_like_q(live):
    session, reader, job = live
    app = LiveApp(reader)
    async with app.run_test() as pilot:
        await _settle(pilot)
        await pilot.press("ctrl+c")
        await _settle(pilot)
        assert not app.is_running
    assert session.stop_reason == "user quit"


@async_test
async def test_a_stop_signal_closes_the_app_without_the_grace_period(live):
    session, reader, job = live
    app = LiveApp(reader, end_grace_s=30)
    async with app.run_test() as pilot:
        await _settle(pilot)
        session.request_stop("signal SIGTERM")  # what the CLI's signal handler does
        for _ in range(30):
            await asyncio.sleep(0.1)
            if not app.is_running:
                break
        assert not app.is_running and app.return_code == 0


@async_test
async def test_the_app_subscribes_once_so_each_tick_is_drawn_once(live, monkeypatch):
    session, reader, job = live
    subscriptions = []
    monkeypatch.setattr(reader, "subscribe", subscriptions.append)
    app = LiveApp(reader)
    async with app.run_test() as pilot:
        await _settle(pilot)
        assert len(subscriptions) == 1  # Textual runs on_mount of every class in the MRO
        await pilot.press("q")


@async_test
async def test_a_finding_updated_by_the_analysis_keeps_its_selection(live):
    session, reader, job = live
    app = LiveApp(reader)
    async with app.run_test(size=(120, 40)) as pilot:
        extra = {
            **job.findings(11)[0],
            "rule": "gpu_power_cap",
            "severity": "info",
            "summary": "gpu0 near its power limit",
        }
        session.context.publish_findings([*job.findings(11), extra])
        session.hub.publish(job.ts(12), job.batches(12), {})
        await _settle(pilot)
        await pilot.press("f", "down")
        table = app.query_one(FindingsTable)
        assert table.selected.rule == "gpu_power_cap"
        session.context.publish_findings(
            [
                job.findings(11)[0],
                {**extra, "summary": "gpu0 at its power limit for 30 s"},
            ]
        )
        session.hub.publish(job.ts(13), job.batches(13), {})
        await _settle(pilot)
        assert table.selected.summary == "gpu0 at its power limit for 30 s"
        await pilot.press("enter")
        await _settle(pilot)
        assert isinstance(app.screen, EvidenceScreen)
        assert app.screen.finding.rule == "gpu_power_cap"
        await pilot.press("escape", "q")


@async_test
async def test_short_terminals_get_two_line_cards(tmp_path):
    job = SyntheticJob(gpus=8, used=8)
    session = synthetic_session(str(tmp_path / "eight.duckdb"), job, 3, with_child=False)
    reader = LiveReader(session.context, SessionControl(session))
    try:
        app = LiveApp(reader)
        async with app.run_test(size=(80, 24)) as pilot:
            feed(session, job, 3)
            await _settle(pilot)
            assert app.has_class("-short")
            cards = list(app.query(GpuCard))
            assert len(cards) == 8 and {c.size.height for c in cards} == {2}
            text = screen_text(app)
            assert sum(f"gpu{i} · NVIDIA" in text for i in range(8)) >= 5  # vs 2 full cards
            await pilot.resize_terminal(80, 40)
            await _settle(pilot)
            assert not app.has_class("-short") and cards[0].size.height > 4
            await pilot.press("q")
    finally:
        reader.close()
        end_session(session)


@async_test
async def test_a_following_chart_reads_only_what_came_after_its_last_point(live):
    from tests.tui.synthetic import feed

    session, reader, job = live
    asked: list[tuple[float, float]] = []
    history = reader.history

    def spy(entity, metric, start, end):
        asked.append((start, end))
        return history(entity, metric, start, end)

    reader.history = spy  # type: ignore[method-assign]
    app = LiveApp(reader)
    async with app.run_test(size=(100, 30)) as pilot:
        await _settle(pilot)
        await pilot.click("#card-gpu0")
        await pilot.press("g")
        await _settle(pilot, 0.3)
        screen = app.screen
        chart = screen.query_one(Chart)
        assert len(chart.series) == 12
        last = float(chart.series.ts[-1])
        for tick in range(12, 15):
            feed(session, job, tick)
        for _ in range(400):  # until the store's writer has flushed them (slow under load)
            if len(history("gpu0", chart.metric, job.ts(0), job.ts(14))) == 15:
                break
            await asyncio.sleep(0.05)
        asked.clear()
        screen._follow_tick()  # the screen's own interval timer may follow as well
        for _ in range(200):
            await _settle(pilot, 0.05)
            if len(chart.series) == 15:
                break
        start_of_window = screen.window()[0]
        assert asked and all(start == last for start, _ in asked[:1])
        assert all(start > start_of_window for start, _ in asked)  # never the whole window
        assert len(chart.series) == 15 and chart.series.ts[-1] == job.ts(14)
        assert list(chart.series.ts) == sorted(set(chart.series.ts))  # no point twice
        await pilot.press("escape", "q")
