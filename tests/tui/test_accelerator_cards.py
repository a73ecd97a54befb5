"""A test-only accelerator source gets cards like a GPU, read by role, with no code naming it."""

from __future__ import annotations

import ast
from pathlib import Path

from agent.app.session import SessionControl
from agent.health_text import ProblemWatch, health_phrases
from agent.reader import Frame, LiveReader
from agent.snapshot import SnapshotHub
from tests.fakes.dummy_accelerator import GIB, DummyCollector
from tests.tui.screen import async_test, screen_text
from tests.tui.synthetic import SyntheticJob, end_session, synthetic_session
from tui.live import LiveApp
from tui.views import accelerator_views, tracked_metrics
from tui.widgets.gpu import GpuCard
from tui.widgets.timeseries import TimeSeriesScreen

ROOT = Path(__file__).resolve().parents[2]


def _feed(session, job: SyntheticJob, collector: DummyCollector, tick: int) -> None:
    batches = [*job.batches(tick), collector.collect(job.ts(tick))]
    session.store.write_ticks([(session.run.run_id, batches)])
    session.hub.publish(job.ts(tick), batches, {"ticks": tick + 1, "samples": 1, "disabled": {}})


def test_accelerator_views_read_a_dummy_device_by_role(dummy_accelerator):
    dummy_accelerator.model.set(1, busy=0.5, power=120.0)
    collector = dummy_accelerator.spec.collector()
    hub = SnapshotHub()
    snap = hub.publish(1.0, [collector.collect(1.0)], {})
    views = accelerator_views(Frame(snapshot=snap, recent={}, findings=[], health={}))
    assert [(v.source, v.entity, v.name) for v in views] == [
        ("dummy", "dev0", "Dummy Accelerator"),
        ("dummy", "dev1", "Dummy Accelerator"),
    ]
    dev1 = views[1]
    assert dev1.get("accelerator.busy") == 0.5 and dev1.get("accelerator.power") == 120.0
    assert dev1.get("accelerator.memory.total") == 80 * GIB
    assert not dev1.has("accelerator.temperature") and not dev1.lost
    assert dev1.device_word == "DUMMY"
    assert "dummy.busy" in tracked_metrics()


@async_test
async def test_a_dummy_accelerator_gets_cards_with_only_the_lines_it_has(
    tmp_path, dummy_accelerator
):
    job = SyntheticJob(gpus=0)
    session = synthetic_session(str(tmp_path / "dummy.duckdb"), job, 0)
    reader = LiveReader(session.context, SessionControl(session))
    collector = dummy_accelerator.spec.collector()
    dummy_accelerator.model.set(0, busy=0.75, power=250.0)
    try:
        for tick in range(4):
            _feed(session, job, collector, tick)
        app = LiveApp(reader)
        async with app.run_test(size=(160, 48)) as pilot:
            for tick in (4, 5):  # tracked from the app's start
                _feed(session, job, collector, tick)
                await pilot.pause(0.05)
            await pilot.pause(0.2)
            await app.workers.wait_for_complete()
            await pilot.pause()
            cards = list(app.query(GpuCard))
            assert [(c.entity, c.source) for c in cards] == [("dev0", "dummy"), ("dev1", "dummy")]
            assert str(cards[0].border_title) == "dev0 · Dummy Accelerator"
            card = cards[0].render().plain
            assert "busy  75%" in card and "30.0/80.0 GiB" in card and "250 W" in card
            assert "clk" not in card and "pcie" not in card  # lines it has no metric for
            assert len(cards[0].view.recent["accelerator.busy"]) >= 2  # its sparkline history
            assert "No accelerators" not in screen_text(app)
            cards[0].focus()
            await pilot.press("g")
            await pilot.pause()
            assert isinstance(app.screen, TimeSeriesScreen)
            assert "dummy.busy" in app.screen.metrics
    finally:
        reader.close()
        end_session(session)


def test_no_ui_or_export_code_names_a_source():
    """Cards, header, headless line and exporters find devices by kind and metrics by role."""
    offenders = []
    files = [*ROOT.joinpath("tui").rglob("*.py"), *ROOT.joinpath("exporters").rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("nvml", "dummy", "tpu"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def test_health_is_shown_in_words_and_internal_counters_are_hidden():
    health = {
        "samples": 120,
        "analysis.cpu_s": 0.0012,
        "analysis.cpu_share": 0.0081,
        "otlp.exports": 0,
        "otlp.failed_exports": 3,
        "otlp.state": "failing",
        "otlp.error": "collector down: 127.0.0.1:4317",
        "prometheus.scrapes": 9,
        "store.state": "disk full: 12 ticks buffered, 0 dropped",
        "store.buffered_ticks": 12,
        "store.failures": 4,
    }
    texts = [(p.text, p.bad) for p in health_phrases(health)]
    assert texts == [
        ("OTLP export: collector down: 127.0.0.1:4317, 3 failed exports", True),
        ("store: disk full: 12 ticks buffered, 0 dropped", True),
    ]
    assert [p.text for p in health_phrases({"analysis.state": "degraded"})] == [
        "analysis: degraded"
    ]
    recovered = {"otlp.failed_exports": 3, "otlp.state": "ok", "store.state": "ok"}
    assert [(p.text, p.bad) for p in health_phrases(recovered)] == [
        ("OTLP export: 3 failed exports", False)
    ]


def test_each_new_problem_is_told_once_and_again_after_recovery():
    watch = ProblemWatch()
    failing = {"otlp.state": "failing", "otlp.error": "collector down: c:4317"}
    assert watch.new_problems(failing) == ["OTLP export: collector down: c:4317"]
    assert watch.new_problems({**failing, "store.state": "disk full: 1 ticks buffered"}) == []
    assert watch.new_problems({**failing, "otlp.failed_exports": 2}) == []
    assert watch.new_problems({"otlp.state": "ok"}) == []
    assert watch.new_problems(failing) == ["OTLP export: collector down: c:4317"]


def test_the_headless_line_shows_every_accelerator_and_problems_in_words(dummy_accelerator):
    from agent.app.commands import format_live_line

    dummy_accelerator.model.set(0, busy=0.75)
    collector = dummy_accelerator.spec.collector()
    snap = SnapshotHub().publish(1.0, [collector.collect(1.0)], {})
    health = {"otlp.state": "failing", "otlp.error": "collector down: c:4317", "analysis.cpu_s": 1}
    line = format_live_line(snap, health)
    assert "dev0=75% dev1=0%" in line
    assert line.endswith("· OTLP export: collector down: c:4317") and "cpu_s" not in line
