"""The live UI on simulated GPUs: a real Session (simulated NVML, NVML collector, process and
host collectors) attached to a real child process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.app.session import Session, SessionConfig, SessionControl
from agent.reader import LiveReader
from agent.store import connect
from tests.tui.screen import async_test, screen_text
from tui.format import fmt
from tui.live import LiveApp
from tui.widgets.gpu import GpuCard
from tui.widgets.processes import ProcessTable

SCENARIOS = Path(__file__).resolve().parents[2] / "collectors" / "sim" / "scenarios"


@pytest.fixture
def hot_scenario(tmp_path) -> str:
    """throttled-thermal with the overheating from the first second, so tests need not wait."""
    text = (SCENARIOS / "throttled-thermal.toml").read_text()
    path = tmp_path / "hot-now.toml"
    path.write_text(text.replace("start_s = 15", "start_s = 0"))
    return str(path)


@pytest.fixture
def sleeper():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


async def _until(pilot, predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
    await pilot.pause()


@async_test
async def test_simulated_gpus_show_their_values_and_throttling(tmp_path, hot_scenario, sleeper):
    session = Session(
        SessionConfig(
            db_path=str(tmp_path / "sim.duckdb"),
            interval=0.25,
            simulate=hot_scenario,
            headless=False,
            live_analysis=False,
        )
    )
    session.attach(sleeper.pid)
    reader = LiveReader(session.context, SessionControl(session))
    app = LiveApp(reader)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await _until(
                pilot,
                lambda: (
                    len(app.query(GpuCard)) == 8
                    and app.frame is not None
                    and app.frame.snapshot.value("gpu2", "gpu.clock_event.hw_thermal")
                ),
            )
            snap = app.frame.snapshot
            cards = {c.entity: c for c in app.query(GpuCard)}
            assert cards["gpu2"].has_class("-throttled") and cards["gpu3"].has_class("-throttled")
            assert not cards["gpu0"].has_class("-throttled")
            assert cards["gpu0"].view.name == snap.entity_attrs["gpu0"]["name"]
            text = screen_text(app)
            used = fmt("gpu.memory.used", snap.value("gpu0", "gpu.memory.used")).split()[0]
            total = fmt("gpu.memory.total", snap.value("gpu0", "gpu.memory.total"))
            assert f"{used}/{total}" in text
            assert "THROTTLED: SW THERMAL HW THERMAL" in text
            table = app.query_one(ProcessTable)
            assert [r.pid for r in table.rows] == [sleeper.pid]
            await pilot.press("q")
    finally:
        reader.close()
        run = session.finish()
    assert run.status == "stopped"
    con = connect(session.store.path, read_only=True)
    try:
        gpus = con.execute(
            "SELECT count(DISTINCT entity) FROM samples WHERE source = 'nvml' "
            "AND metric = 'gpu.utilization'"
        ).fetchone()[0]
    finally:
        con.close()
    assert gpus == 8


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ACCELWATCH_SLOW"), reason="set ACCELWATCH_SLOW=1")
@async_test
async def test_live_analysis_finding_appears_on_simulated_throttling(
    tmp_path, hot_scenario, sleeper
):
    session = Session(
        SessionConfig(
            db_path=str(tmp_path / "slow.duckdb"),
            interval=0.5,
            simulate=hot_scenario,
            headless=False,
        )
    )
    session.attach(sleeper.pid)
    reader = LiveReader(session.context, SessionControl(session))
    app = LiveApp(reader)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await _until(
                pilot,
                lambda: (
                    app.frame is not None
                    and any(f.entity in ("gpu2", "gpu3") for f in app.frame.findings)
                ),
                timeout=60,
            )
            assert "gpu2" in screen_text(app) or "gpu3" in screen_text(app)
            await pilot.press("q")
    finally:
        reader.close()
        session.finish()


@async_test
async def test_a_gpu_falling_off_the_bus_is_shown_lost(tmp_path, sleeper):
    text = (SCENARIOS / "gpu-lost.toml").read_text().replace("at_s = 25", "at_s = 1")
    scenario = tmp_path / "lost-now.toml"
    scenario.write_text(text)
    session = Session(
        SessionConfig(
            db_path=str(tmp_path / "lost.duckdb"),
            interval=0.25,
            simulate=str(scenario),
            headless=False,
            live_analysis=False,
        )
    )
    session.attach(sleeper.pid)
    reader = LiveReader(session.context, SessionControl(session))
    app = LiveApp(reader)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await _until(
                pilot,
                lambda: (
                    app.query("#card-gpu3")
                    and app.query_one("#card-gpu3", GpuCard).has_class("-lost")
                ),
            )
            assert not app.query_one("#card-gpu2", GpuCard).has_class("-lost")
            assert "GPU LOST" in screen_text(app)
            await pilot.press("q")
    finally:
        reader.close()
        session.finish()


@async_test
async def test_xid_errors_are_counted_on_the_card(tmp_path, sleeper):
    scenario = tmp_path / "xid-now.toml"
    scenario.write_text((SCENARIOS / "xid-error.toml").read_text().replace("at_s = 20", "at_s = 1"))
    session = Session(
        SessionConfig(
            db_path=str(tmp_path / "xid.duckdb"),
            interval=0.25,
            simulate=str(scenario),
            headless=False,
            live_analysis=False,
        )
    )
    session.attach(sleeper.pid)
    reader = LiveReader(session.context, SessionControl(session))
    app = LiveApp(reader)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await _until(
                pilot,
                lambda: (
                    app.frame is not None
                    and any(v for (_, m), v in app.frame.snapshot.values.items() if m == "gpu.xid")
                ),
            )
            assert "✖ XID" in screen_text(app)
            await pilot.press("q")
    finally:
        reader.close()
        session.finish()
