"""The findings panel reads cause-first: the cause on the first screen, even at 80x24."""

from __future__ import annotations

import pytest

from agent.analysis import analyze_run
from agent.store import connect
from tests.analysis.live_runs import HOST_VARIANTS
from tests.analysis.recording import record
from tests.tui.screen import async_test, screen_text
from tui.live import LiveApp
from tui.widgets.findings import EvidenceScreen, FindingsTable


@pytest.fixture(scope="module")
def dataloader_findings(tmp_path_factory) -> list[dict]:
    """What the rules say about a data loader starving eight GPUs: nine findings."""
    path, run_id = record(
        tmp_path_factory.mktemp("run") / "loader.duckdb", HOST_VARIANTS["dataloader"]
    )
    con = connect(str(path))
    try:
        findings = analyze_run(con, run_id, store=False)
    finally:
        con.close()
    assert len(findings) == 9
    return [f.as_live().to_dict() for f in findings]


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
@async_test
async def test_the_cause_is_one_row_on_the_first_screen_with_its_eight_gpus(
    live, dataloader_findings, size
):
    session, reader, job = live
    app = LiveApp(reader)
    async with app.run_test(size=size) as pilot:
        session.context.publish_findings(dataloader_findings)
        session.hub.publish(job.ts(12), job.batches(12), {})
        await pilot.pause(0.1)
        await app.workers.wait_for_complete()
        await pilot.pause()
        text = screen_text(app)
        assert "findings (1)" in text
        assert "Data loading is the bottleneck" in text and "gpu0-7" in text
        assert "was starved" not in text  # no row per symptom
        table = app.query_one(FindingsTable)
        assert table.row_count == 1 and table.selected is not None
        assert table.selected.rule == "dataloader-bound"
        await pilot.press("f", "enter")
        await pilot.pause()
        assert isinstance(app.screen, EvidenceScreen)
        shown = app.screen.finding  # each GPU's evidence is inside the one finding
        assert shown.evidence["explains"] == ["gpu-starvation"]
        assert len(shown.evidence["entities"]) == 9 and "dataloader-bound" in screen_text(app)
        await pilot.press("escape", "q")
