"""The TPU source plugs in through the registry: kinds, roles, collector and simulator."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from agent.app.sources import check_scenario, install_simulators
from agent.catalog import CATALOG
from agent.errors import UsageError
from agent.registry import default_registry
from agent.source import CollectContext
from collectors.tpu.source import SPEC


def test_the_registry_finds_the_tpu_source_through_its_entry_point():
    registry = default_registry()
    assert registry.get("tpu") is SPEC and not registry.notices()
    assert registry.kind_of("tpu", "tpu3") == "accelerator"
    assert registry.kind_of("tpu", "tpu3/core1") == "accelerator.part"
    # the host's runtime (its state, per-host latencies) is a kind of its own, not a chip
    assert registry.kind_of("tpu", "tpu") == "accelerator.runtime"
    assert CATALOG["tpu.duty_cycle"].role == "accelerator.busy"


def test_each_role_is_played_by_one_tpu_metric_in_the_roles_unit():
    roles = Counter(m.role for m in SPEC.metrics if m.role)
    assert all(n == 1 for n in roles.values()), roles
    from agent.catalog.roles import ROLES

    for m in SPEC.metrics:
        assert m.otel_name.startswith("accelwatch.tpu.")
        if m.role:
            assert m.unit == ROLES[m.role][0], m.name


def test_chip_and_core_entities_map_to_opentelemetry_attributes():
    chip, part, runtime = SPEC.entity_kinds
    assert runtime.attributes("tpu") == {"accelwatch.entity": "tpu"}
    assert chip.attributes("tpu2", {"name": "TPU v5e"}) == {
        "hw.id": "tpu2",
        "hw.name": "TPU v5e",
        "hw.type": "tpu",
    }
    assert part.attributes("tpu2/core1", {"name": "TPU 7x core 1", "chip": "tpu2"})[
        "hw.parent"
    ] == ("tpu2")


def test_simulate_installs_a_tpu_vm_the_registered_collector_reads():
    pid = os.getpid()
    sims = install_simulators("tpu-v5e-8-healthy", lambda: [pid])
    try:
        collector = SPEC.collector()
        collector.start(CollectContext(pid, lambda: frozenset([pid])))
        batch = collector.collect(time.time())
        collector.close()
    finally:
        sims.uninstall()
    assert "ACCELWATCH_TPU_RUNTIME" not in os.environ  # uninstall restores the environment
    values = {(e, m): v for e, m, v in zip(batch.entities, batch.metrics, batch.values)}
    assert values[("tpu7", "tpu.duty_cycle")] == pytest.approx(0.93)
    assert values[("tpu7", "tpu.job.processes")] == 1


def test_a_scenario_naming_tpu_without_a_tpu_table_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('sources = ["tpu"]\n[hardware]\nmodel = "t4"\n')
    with pytest.raises(UsageError, match=r"has no \[tpu\] table"):
        check_scenario(str(path))
