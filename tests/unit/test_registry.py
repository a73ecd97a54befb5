"""The source registry: sources found through entry points, duplicates refused, kinds as SQL."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import pytest

from agent.catalog import CATALOG, Catalog, metric
from agent.registry import SourceRegistrationError, SourceRegistry, default_registry
from agent.source import EntityKind, SourceSpec
from tests.fakes.dummy_accelerator import DummyModel, make_spec
from tests.fakes.plugins import install_fake_distribution


def _spec(name: str, *metric_names: str, kinds=()) -> SourceSpec:
    return SourceSpec(
        name=name,
        label=name,
        metrics=tuple(metric(m, "1", "gauge", "test metric", source=name) for m in metric_names),
        entity_kinds=tuple(kinds),
    )


def test_builtin_sources_are_found_through_entry_points_process_first():
    names = [spec.name for spec in default_registry().specs()]
    assert {"process", "host", "disk", "fabric", "nvml", "steps"} <= set(names)
    assert names[0] == "process"
    assert default_registry().notices() == []


@pytest.mark.parametrize(
    ("source", "entity", "kind"),
    [
        ("nvml", "gpu3", "accelerator"),
        ("nvml", "gpu3/mig1", "accelerator.part"),
        ("nvml", "gpu0/nvlink11", "link"),
        ("nvml", "gpu0/pid4242", "accelerator.process"),
        ("host", "host", "host"),
        ("host", "cpu7", "cpu"),
        ("disk", "disk:nvme0n1", "disk"),
        ("host", "net:eth0", "interface"),
        ("fabric", "ib:mlx5_0/1", "port"),
        ("host", "disk:nvme0n1", None),  # disks and ports left the host source
        ("host", "ib:mlx5_0/1", None),
        ("process", "4242", "process"),
        ("steps", "rank3", "rank"),
        ("nvml", "gpu", None),
        ("nvml", "xgpu0", None),
        ("host", "gpu0", None),
        ("elsewhere", "gpu0", None),
    ],
)
def test_builtin_entities_have_their_kind(source, entity, kind):
    assert default_registry().kind_of(source, entity) == kind


def test_catalog_holds_every_registered_sources_metrics():
    for spec in default_registry().specs():
        for m in spec.metrics:
            assert CATALOG[m.name] is m
            assert m.source == spec.name


def test_dummy_accelerator_is_registered_found_by_kind_and_in_the_catalog(dummy_accelerator):
    registry = default_registry()
    assert registry.get("dummy") is dummy_accelerator.spec
    assert registry.kind_of("dummy", "dev1") == "accelerator"
    assert registry.kind_of("dummy", "gpu1") is None
    assert ("dummy", "dev(?P<index>[0-9]+)") in registry.entities_of_kind("accelerator")
    assert CATALOG["dummy.busy"].role == "accelerator.busy"
    assert "dummy.power" in CATALOG
    assert {m.name for m in CATALOG.by_role("accelerator.busy")} >= {
        "gpu.utilization",
        "dummy.busy",
    }
    assert {m.name for m in CATALOG.by_source("dummy")} == {
        "dummy.busy",
        "dummy.memory.used",
        "dummy.memory.total",
        "dummy.power",
    }


def test_dummy_collector_reports_what_its_model_holds(dummy_accelerator):
    dummy_accelerator.model.set(1, busy=0.75)
    collector = dummy_accelerator.spec.collector()
    batch = collector.collect(100.0)
    values = {(e, m): v for e, m, v in zip(batch.entities, batch.metrics, batch.values)}
    assert values[("dev0", "dummy.busy")] == 0.0
    assert values[("dev1", "dummy.busy")] == 0.75
    assert set(batch.metrics) <= {m.name for m in CATALOG.by_source("dummy")}


def test_unregistering_a_source_forgets_its_metrics_and_kinds():
    registry = SourceRegistry(Catalog([]))
    registry.register(make_spec(DummyModel()))
    registry.unregister("dummy")
    assert registry.get("dummy") is None
    assert registry.kind_of("dummy", "dev0") is None
    assert registry.kind_predicate("accelerator") == "FALSE"
    registry.register(make_spec(DummyModel()))  # and it can come back


def test_a_second_source_of_the_same_name_is_refused():
    registry = SourceRegistry(Catalog([]))
    registry.register(_spec("alpha", "alpha.level"))
    with pytest.raises(SourceRegistrationError, match="already registered"):
        registry.register(_spec("alpha", "alpha.other"))
    assert [s.name for s in registry.specs()] == ["alpha"]


def test_a_metric_already_declared_is_refused_and_nothing_is_registered():
    catalog = Catalog([])
    registry = SourceRegistry(catalog)
    registry.register(_spec("alpha", "shared.level"))
    clash = SourceSpec(
        name="beta",
        label="beta",
        metrics=(
            metric("beta.fine", "1", "gauge", "fine", source="beta"),
            metric("shared.level", "1", "gauge", "clash", source="beta"),
        ),
        entity_kinds=(EntityKind("accelerator", "b[0-9]+"),),
    )
    with pytest.raises(SourceRegistrationError, match="shared.level"):
        registry.register(clash)
    assert registry.get("beta") is None
    assert "beta.fine" not in catalog
    assert registry.entities_of_kind("accelerator") == []


def test_a_metric_of_the_process_wide_catalog_cannot_be_declared_again():
    registry = SourceRegistry()  # feeds the process-wide CATALOG, which holds gpu.utilization
    with pytest.raises(SourceRegistrationError, match="gpu.utilization"):
        registry.register(_spec("impostor", "gpu.utilization"))
    assert CATALOG["gpu.utilization"].source == "nvml"


def test_a_metric_declaring_another_source_is_refused():
    bad = SourceSpec("alpha", "alpha", (metric("x.level", "1", "gauge", "x", source="beta"),), ())
    with pytest.raises(SourceRegistrationError, match="declares source 'beta'"):
        SourceRegistry(Catalog([])).register(bad)


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        ((EntityKind("gizmo", "g[0-9]+"),), "entity kind 'gizmo'"),
        ((EntityKind("accelerator", "g[0-9"),), "pattern"),
    ],
)
def test_an_undeclared_kind_or_a_broken_pattern_is_refused(kinds, message):
    with pytest.raises(SourceRegistrationError, match=message):
        SourceRegistry(Catalog([])).register(_spec("alpha", "alpha.level", kinds=kinds))


def test_kind_predicate_selects_the_kinds_rows_in_duckdb(dummy_accelerator):
    predicate = default_registry().kind_predicate("accelerator", "s", "e")
    rows = [
        ("nvml", "gpu0"),
        ("nvml", "gpu0/mig1"),
        ("nvml", "gpu1/pid42"),
        ("dummy", "dev0"),
        ("dummy", "dev1"),
        ("host", "host"),
        ("host", "gpu9"),
        ("process", "42"),
    ]
    with duckdb.connect() as con:
        con.execute("CREATE TABLE t (s VARCHAR, e VARCHAR)")
        con.executemany("INSERT INTO t VALUES (?, ?)", rows)
        found = con.execute(f"SELECT s, e FROM t WHERE {predicate} ORDER BY s, e").fetchall()
    assert found == [("dummy", "dev0"), ("dummy", "dev1"), ("nvml", "gpu0")]


def test_kind_predicate_is_false_when_no_source_declares_the_kind():
    registry = SourceRegistry(Catalog([]))
    registry.register(_spec("alpha", "alpha.level"))
    predicate = registry.kind_predicate("accelerator")
    assert predicate == "FALSE"
    with duckdb.connect() as con:
        assert con.execute(f"SELECT count(*) FROM range(3) WHERE {predicate}").fetchone() == (0,)


def test_kind_predicate_quotes_the_source_and_pattern():
    registry = SourceRegistry(Catalog([]))
    registry.register(_spec("alpha", "alpha.level", kinds=[EntityKind("port", "it's:.+")]))
    predicate = registry.kind_predicate("port", "src", "ent")
    assert predicate == "(src = 'alpha' AND regexp_full_match(ent, 'it''s:.+'))"
    with duckdb.connect() as con:
        found = con.execute(
            f"SELECT count(*) FROM (VALUES ('alpha', 'it''s:x'), ('alpha', 'its:x')) t(src, ent) "
            f"WHERE {predicate}"
        ).fetchone()
    assert found == (1,)


def test_entity_kind_fills_its_otel_attributes_from_groups_and_description():
    kind = EntityKind(
        "accelerator",
        "dev(?P<index>[0-9]+)",
        {"hw.id": "{uuid}", "hw.index": "{index}", "x": "d{index}"},
    )
    assert kind.attributes("dev3", {"uuid": "U-3"}) == {"hw.id": "U-3", "hw.index": 3, "x": "d3"}
    assert kind.attributes("dev3") == {"hw.index": 3, "x": "d3"}  # undescribed: no hw.id


def test_plugins_are_discovered_once_and_a_broken_one_becomes_a_notice(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path,
        monkeypatch,
        """\
        [accelwatch.test_sources]
        a_good = aw_fake_plugin:SPEC
        b_missing = aw_no_such_module:SPEC
        c_not_a_spec = aw_fake_plugin:NOT_A_SPEC
        d_twin = aw_fake_plugin:TWIN
        """,
    )
    catalog = Catalog([])
    registry = SourceRegistry(catalog, discover=True, group="accelwatch.test_sources")
    assert "fakeplug.level" not in catalog._index  # nothing happens before the first read
    assert [s.name for s in registry.specs()] == ["fakeplug"]
    assert registry.kind_of("fakeplug", "fp:mlx5_0/1") == "port"
    assert catalog["fakeplug.level"].source == "fakeplug"
    notices = {n.source: n.reason for n in registry.notices()}
    assert set(notices) == {"b_missing", "c_not_a_spec", "d_twin"}
    assert "ModuleNotFoundError" in notices["b_missing"]
    assert "not a SourceSpec" in notices["c_not_a_spec"]
    assert "already registered" in notices["d_twin"]
    registry.specs()
    assert len(registry.notices()) == 3  # loaded once


def test_importing_the_catalog_discovers_no_plugin_until_it_is_read():
    code = (
        "import sys\n"
        "from agent.catalog import CATALOG\n"
        "print('collectors.host' in sys.modules, 'agent.registry' in sys.modules)\n"
        "CATALOG['gpu.utilization']\n"
        "print('collectors.host' in sys.modules)\n"
        "CATALOG.by_role('accelerator.busy')\n"
        "print('collectors.host' in sys.modules, 'pynvml' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False", "False", "True", "False"]


def test_unregistering_a_builtin_source_keeps_the_cores_declarations():
    registry = SourceRegistry()  # the process-wide catalog already holds gpu.utilization
    nvml = default_registry().get("nvml")
    registry.register(nvml)
    registry.unregister("nvml")
    assert CATALOG["gpu.utilization"] is next(
        m for m in nvml.metrics if m.name == "gpu.utilization"
    )
