"""The headless line: accelerators found by kind, asked of the registry once per shape."""

from __future__ import annotations

from agent.app import commands
from agent.app.commands import format_live_line
from agent.model import Batch
from agent.snapshot import SnapshotHub


def _nvml(ts: float, gpus: int) -> Batch:
    entities = [e for i in range(gpus) for e in (f"gpu{i}", f"gpu{i}/nvlink0", f"gpu{i}/pid7")]
    return Batch("nvml", ts, entities, ["gpu.utilization"] * len(entities), [0.5] * len(entities))


def test_the_headless_line_shows_at_most_eight_accelerators_asking_the_registry_once(monkeypatch):
    asked = []
    real = commands.default_registry()
    monkeypatch.setattr(
        real, "kind_of", lambda s, e: asked.append(e) or type(real).kind_of(real, s, e)
    )
    hub = SnapshotHub()
    lines = [format_live_line(hub.publish(float(t), [_nvml(float(t), 10)], {})) for t in (1, 2, 3)]
    assert all(f"gpu{i}=50%" in line for line in lines for i in range(8))
    assert all("gpu8" not in line and "nvlink" not in line for line in lines)
    assert len(asked) == 30  # every entity once, on the first tick only
    format_live_line(hub.publish(4.0, [_nvml(4.0, 2)], {}))  # a device went: asked again
    assert len(asked) == 36
