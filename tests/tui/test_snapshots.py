"""Screenshots of the live screen, healthy and throttled, at 80×24 and 160×48.

Fixed data, fixed clock (elapsed time comes from the data), fixed DB path: deterministic.
Update with ``pytest tests/tui/test_snapshots.py --snapshot-update`` after checking the SVGs.
"""

from __future__ import annotations

import pytest

from agent.app.session import SessionControl
from agent.reader import LiveReader
from tests.tui.synthetic import SyntheticJob, end_session, feed, synthetic_session
from tui.app import AccelwatchApp


@pytest.fixture(params=["healthy", "throttled"])
def scenario_app(request, tmp_path):
    job = SyntheticJob(gpus=3, used=2, workers=3, throttled=request.param == "throttled")
    session = synthetic_session(str(tmp_path / "snap.duckdb"), job, 0, with_child=False)
    session.run.db_path = "runs/llama.duckdb"  # what the header shows; tmp paths vary
    reader = LiveReader(session.context, SessionControl(session))
    for tick in range(30):
        feed(session, job, tick)
    yield AccelwatchApp(reader)
    reader.close()
    end_session(session)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_live_screen(snap_compare, scenario_app, size):
    assert snap_compare(scenario_app, terminal_size=size)
