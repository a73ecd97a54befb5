"""The hub's snapshots: values per tick, attributes carried over without a copy per tick."""

from agent.model import Batch
from agent.snapshot import SnapshotHub


def _batch(value: float, attrs: dict | None = None) -> Batch:
    return Batch("nvml", 0.0, ["gpu0"], ["gpu.utilization"], [value], entity_attrs=attrs or {})


def test_snapshots_share_entity_attributes_until_a_batch_changes_them():
    hub = SnapshotHub()
    first = hub.publish(1.0, [_batch(10.0, {"gpu0": {"name": "H100"}})], {})
    second = hub.publish(2.0, [_batch(20.0)], {})
    assert second.entity_attrs == {"gpu0": {"name": "H100"}}
    assert second.entity_attrs is first.entity_attrs  # no copy on a tick without attributes
    third = hub.publish(3.0, [_batch(30.0, {"gpu1": {"name": "H100"}})], {})
    assert set(third.entity_attrs) == {"gpu0", "gpu1"}
    assert set(second.entity_attrs) == {"gpu0"}  # an older snapshot keeps what it had
    assert third.value("gpu0", "gpu.utilization") == 30.0
    assert third.previous[("gpu0", "gpu.utilization")] == 20.0


def _tick(ts: float, entities: list[str], metrics: list[str], values: list[float]) -> Batch:
    return Batch("nvml", ts, entities, metrics, values)


def test_snapshot_values_read_as_a_dict_of_every_batch_would_the_later_batch_winning():
    """Same keys, values, order and duplicates as ``dict.update`` over the batches in order."""
    batches = [
        Batch("host", 1.0, ["host", "cpu0"], ["host.cpu.utilization"] * 2, [0.5, 0.25]),
        _tick(
            1.0,
            ["gpu0", "gpu0", "gpu1"],
            ["gpu.utilization", "gpu.power", "gpu.power"],
            [90.0, 300.0, 310.0],
        ),  # fmt: skip
        Batch("agent", 1.0, ["gpu0"], ["gpu.power"], [299.0]),  # a duplicate key: this one wins
    ]
    expected: dict = {}
    for b in batches:
        expected.update(zip(zip(b.entities, b.metrics), b.values))
    snap = SnapshotHub().publish(1.0, batches, {})
    assert dict(snap.values) == expected
    assert list(snap.values) == list(expected)
    assert len(snap.values) == len(expected)
    assert snap.values[("gpu0", "gpu.power")] == 299.0
    assert snap.values.get(("gpu9", "gpu.power")) is None
    assert snap.value("gpu9", "gpu.power", -1.0) == -1.0
    assert ("cpu0", "host.cpu.utilization") in snap.values
    assert ("cpu0", "gpu.power") not in snap.values


def test_a_tick_of_another_shape_gets_its_own_index_and_the_previous_values_stay():
    hub = SnapshotHub()
    first = hub.publish(1.0, [_tick(1.0, ["gpu0"], ["gpu.energy"], [100.0])], {})
    same = hub.publish(2.0, [_tick(2.0, ["gpu0"], ["gpu.energy"], [150.0])], {})
    assert same.rate("gpu0", "gpu.energy") == 50.0
    grown = hub.publish(
        4.0, [_tick(4.0, ["gpu1", "gpu0"], ["gpu.energy", "gpu.energy"], [7.0, 250.0])], {}
    )  # a device came: other columns, a new index
    assert grown.value("gpu1", "gpu.energy") == 7.0
    assert grown.rate("gpu0", "gpu.energy") == 50.0
    assert grown.rate("gpu1", "gpu.energy") is None
    shrunk = hub.publish(5.0, [_tick(5.0, ["gpu1"], ["gpu.energy"], [8.0])], {})
    assert shrunk.value("gpu0", "gpu.energy") is None
    assert dict(shrunk.previous) == {("gpu1", "gpu.energy"): 7.0, ("gpu0", "gpu.energy"): 250.0}
    assert dict(first.values) == {("gpu0", "gpu.energy"): 100.0}  # older snapshots keep theirs
    assert dict(same.values) == {("gpu0", "gpu.energy"): 150.0}


def test_a_tick_with_the_same_columns_reuses_the_index_without_a_key_per_value(monkeypatch):
    """The sampler's cost: no dict of every value per tick while the sources' shapes hold."""
    import agent.snapshot as snapshot

    built = []
    real = snapshot._index_of
    monkeypatch.setattr(snapshot, "_index_of", lambda batches: built.append(1) or real(batches))
    hub = SnapshotHub()
    for ts in range(1, 6):  # fresh lists each tick, equal contents, as a collector builds them
        snap = hub.publish(float(ts), [_tick(float(ts), ["gpu0"], ["gpu.energy"], [ts * 10.0])], {})
        assert snap.value("gpu0", "gpu.energy") == ts * 10.0
    assert len(built) == 1
    hub.publish(6.0, [_tick(6.0, ["gpu0"], ["gpu.power"], [1.0])], {})
    assert len(built) == 2


def test_a_sources_entities_are_worked_out_once_per_shape_in_first_seen_order():
    hub = SnapshotHub()
    one = hub.publish(1.0, [_tick(1.0, ["gpu1", "gpu0", "gpu1"], ["a", "a", "b"], [1, 2, 3])], {})
    two = hub.publish(2.0, [_tick(2.0, ["gpu1", "gpu0", "gpu1"], ["a", "a", "b"], [4, 5, 6])], {})
    assert one.entities("nvml") == ("gpu1", "gpu0")
    assert two.entities("nvml") is one.entities("nvml")  # the same shape: not walked again
    assert two.entities("host") == ()
    three = hub.publish(3.0, [_tick(3.0, ["gpu2"], ["a"], [7])], {})
    assert three.entities("nvml") == ("gpu2",)
    assert one.entities("nvml") == ("gpu1", "gpu0")


def test_attributes_of_processes_that_ended_do_not_pile_up_in_the_hub():
    """A job that keeps spawning short processes: the hub keeps the live ones' attributes and
    forgets the gone ones' once they outnumber them, so a week of churn does not grow it."""
    from agent.model import BatchBuilder
    from agent.snapshot import ATTRS_KEPT_MIN, SnapshotHub

    hub = SnapshotHub()
    for tick in range(2000):
        b = BatchBuilder("process", float(tick))
        b.add("gpu0", "util", 1.0)
        if tick == 0:
            b.describe("gpu0", name="H100")  # described once, sampled every tick
        for pid in (tick, tick + 1):  # each process lives two ticks
            b.add(f"pid{pid}", "cpu", 0.5)
        b.describe(f"pid{tick + 1}", cmd="worker")
        batches = [b.build()]
        if tick % 7 == 0:  # another source, described once, whose tick is sometimes missing
            d = BatchBuilder("disk", float(tick))
            d.add("nvme0", "read", 1.0)
            if tick == 0:
                d.describe("nvme0", model="x")
            batches.append(d.build())
        snap = hub.publish(float(tick), batches, {})
    attrs = snap.entity_attrs
    assert len(attrs) <= 2 * 4 + ATTRS_KEPT_MIN + 1
    assert attrs["nvme0"] == {"model": "x"}
    assert attrs["gpu0"] == {"name": "H100"}  # live entities keep what they were described with
    assert attrs["pid2000"] == {"cmd": "worker"} and "pid1999" in attrs
    assert "pid1" not in attrs
