"""TPU chips in the live TUI: cards read by role show the HLO queue and the p50/p99 of program
execution, host <-> device transfers and collectives (per-host latencies come from the
source's runtime entity). The real TPU collector reads a simulated libtpu on a test clock."""

from __future__ import annotations

import os
import re

import pytest

from agent.app.session import SessionControl
from agent.reader import Frame, LiveReader
from agent.snapshot import SnapshotHub
from agent.source import CollectContext
from collectors.sim.scenario import load_scenario
from collectors.sim.tpu.vm import SimulatedTpu
from collectors.tpu.collector import TpuCollector
from tests.helpers import VALUES_DEADLINE_S
from tests.tui.screen import async_test, screen_text
from tests.tui.synthetic import SyntheticJob, end_session, synthetic_session
from tui.live import LiveApp
from tui.views import accelerator_views
from tui.widgets.gpu import GpuCard, latency_text, runtime_lines

T0 = 1_700_000_000.0


class _Clock:
    t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def tpu(tmp_path):
    """``tpu(scenario)`` → (collector, clock): a started collector on a simulated TPU VM."""
    made = []

    def make(name: str):
        clock = _Clock()
        sim = SimulatedTpu(
            load_scenario(name).tpu,
            root=tmp_path / f"vm{len(made)}",
            owner_pids=lambda: [os.getpid()],
            clock=clock,
        )
        collector = TpuCollector(env=sim.env, deadline=VALUES_DEADLINE_S)
        pid = os.getpid()
        collector.start(CollectContext(pid, lambda: frozenset([pid])))
        made.append((sim, collector))
        return collector, clock

    yield make
    for sim, collector in made:
        collector.close()
        sim.uninstall()


def _views(collector, clock, seconds: int):
    hub = SnapshotHub()
    snap = None
    for _ in range(seconds):
        clock.t += 1
        snap = hub.publish(clock.t, [collector.collect(clock.t)], {})
    return accelerator_views(Frame(snapshot=snap, recent={}, findings=[], health={}))


def test_latency_text_is_short_and_keeps_its_unit():
    assert [latency_text(v) for v in (None, 8.5e-4, 0.048, 0.11, 1.25)] == [
        "–",
        "850µs",
        "48.0ms",
        "110ms",
        "1.25s",
    ]


def test_a_tpu_chip_view_has_its_queue_and_the_hosts_latencies_by_role(tpu):
    collector, clock = tpu("tpu-7x-multislice-dcn-bound")
    views = _views(collector, clock, 12)
    assert [v.entity for v in views] == ["tpu0", "tpu1", "tpu2", "tpu3"]
    lines = {k: "  ".join(v) for k, v in runtime_lines(views[0])}
    # the effect's one queued program per device from 8 s: the chip's two devices together
    assert re.match(r"queue 2  p50 (29|30)\.\dms p99 ", lines["exec"])  # both devices

    # per-host collective and DCN latencies, read from the source's runtime entity
    assert "dcn p50 " in lines["coll"] and views[0].get("accelerator.dcn.latency.p99") > 0.005
    assert views[0].get("accelerator.collective.latency.p50") == pytest.approx(0.014, rel=0.3)
    assert "h2d p50 " in lines["xfer"] and "d2h p50 " in lines["xfer"]


def test_a_single_slice_chip_has_no_collective_line_and_gpu_cards_no_runtime_lines(tpu):
    collector, clock = tpu("tpu-v5e-8-healthy")
    (first, *_) = _views(collector, clock, 3)
    lines = {k: "  ".join(v) for k, v in runtime_lines(first)}
    assert set(lines) == {"exec"}  # no megascale.* offered on one slice
    assert lines["exec"].startswith("queue 3  p50 ") and " p99 " in lines["exec"]


@async_test
async def test_the_live_app_draws_tpu_cards_with_queue_and_latency_lines(tmp_path, tpu):
    collector, clock = tpu("tpu-7x-multislice-dcn-bound")
    job = SyntheticJob(gpus=0)
    session = synthetic_session(str(tmp_path / "tpu.duckdb"), job, 0)
    reader = LiveReader(session.context, SessionControl(session))

    def feed(tick: int) -> None:
        clock.t = job.ts(tick)
        batches = [*job.batches(tick), collector.collect(clock.t)]
        session.store.write_ticks([(session.run.run_id, batches)])
        session.hub.publish(clock.t, batches, {"ticks": tick + 1, "samples": 1, "disabled": {}})

    try:
        for tick in range(10):
            feed(tick)
        app = LiveApp(reader)
        async with app.run_test(size=(160, 60)) as pilot:
            for tick in (10, 11):
                feed(tick)
                await pilot.pause(0.05)
            await pilot.pause(0.2)
            await app.workers.wait_for_complete()
            await pilot.pause()
            cards = list(app.query(GpuCard))
            assert [c.entity for c in cards] == ["tpu0", "tpu1", "tpu2", "tpu3"]
            card = cards[0].render().plain
            assert "duty" in card and "GiB" in card
            for label in ("exec", "xfer", "coll"):
                assert any(line.startswith(label) for line in card.splitlines()), card
            assert "queue 2" in card and "dcn p50 " in card and "ms p99 " in card
            screen = screen_text(app)
            # narrow cards wrap the percentiles instead of cutting them off
            assert "dcn p50 " in screen and "…" not in screen.split("processes")[0]
    finally:
        reader.close()
        end_session(session)
