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
