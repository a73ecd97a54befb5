"""The export state (series index, OTLP request builder, Prometheus label cache) does not grow
with the number of intervals, also while the job's processes come and go (issue 14: memory
bounded)."""

from __future__ import annotations

from agent.snapshot import SnapshotHub
from exporters.naming import build_plan
from exporters.otlp_request import RequestBuilder
from exporters.prometheus import Exposition
from exporters.series import SeriesIndex
from tests.exporters.test_naming import _tick


def state_size(index: SeriesIndex, builder: RequestBuilder, exposition: Exposition) -> int:
    """Entries the export keeps between intervals."""
    instruments = builder._instruments.values()
    return (
        len(index._entities)
        + len(index._admitted)
        + sum(len(i._by_key) + len(i._by_id) for i in instruments)
        + len(exposition._prefixes)
    )


def test_export_state_does_not_grow_with_intervals_while_processes_churn():
    hub = SnapshotHub()
    plan = build_plan(("otel", "dcgm"))
    index = SeriesIndex(plan, "node1", max_processes=8, health={})
    latest = [None]
    builder = RequestBuilder(plan, {}, ("t", "1"), lambda: index.points(latest[0]))
    exposition = Exposition(plan, {}, {"host.name": "node1"})
    sizes = []
    for interval in range(400):
        pids = list(range(1000 + interval, 1006 + interval))  # one new process, one gone
        latest[0] = _tick(hub, 100.0 + interval, pids=pids, gpu_pids=pids[:2], energy=interval)
        _, points = builder.build_encoded()
        text = exposition.render(index.points(latest[0]))
        assert points > 0 and f'process_pid="{pids[-1]}"' in text  # the newest is exported
        sizes.append(state_size(index, builder, exposition))
    # every process that ended was forgotten: what is kept after 400 intervals is what was
    # kept after 50 (the OTLP builder forgets a series 10 exports after it was last seen)
    assert max(sizes[50:]) <= max(sizes[20:50])
    assert max(sizes) < 400
