"""The app starts whatever the registry holds, and a scenario's simulators by the sources it names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.app.session import Session, SessionConfig
from agent.app.sources import candidate_collectors, check_scenario, install_simulators
from agent.catalog import Catalog, metric
from agent.errors import UsageError
from agent.registry import SourceRegistry
from agent.source import SourceSpec
from collectors.process import SPEC as PROCESS_SPEC
from collectors.process import ProcessCollector
from collectors.sim import load_scenario, scenario_sources
from tests.fakes.dummy_accelerator import DummyCollector, DummyModel, make_spec
from tests.fakes.plugins import install_fake_distribution
from tests.helpers import query


def _registry(*specs: SourceSpec, **kw) -> SourceRegistry:
    registry = SourceRegistry(Catalog([]), **kw)
    for spec in specs:
        registry.register(spec)
    return registry


def _no_driver():
    raise ImportError("libfake.so not found")


def _spec(name: str, **kw) -> SourceSpec:
    return SourceSpec(
        name,
        name,
        (metric(f"{name}.level", "1", "gauge", "a level", source=name),),
        (),
        **kw,
    )


def test_collectors_come_from_the_registry_process_first_and_a_missing_driver_is_a_notice():
    dummy = make_spec(DummyModel())
    registry = _registry(
        dummy,
        _spec("reported"),  # no collector: the job reports it
        _spec("nodriver", collector=_no_driver),
        PROCESS_SPEC,
    )
    process = ProcessCollector(1)
    collectors, notices = candidate_collectors(process, registry)
    assert collectors[0] is process
    assert [type(c) for c in collectors] == [ProcessCollector, DummyCollector]
    assert notices == [("collector_unavailable", "nodriver", {"reason": "libfake.so not found"})]


def test_a_plugin_that_fails_to_load_is_a_startup_notice(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path, monkeypatch, "[accelwatch.test_sources]\nbroken = aw_no_such_module:SPEC\n"
    )
    registry = _registry(PROCESS_SPEC, discover=True, group="accelwatch.test_sources")
    collectors, notices = candidate_collectors(ProcessCollector(1), registry)
    assert len(collectors) == 1
    [(kind, source, detail)] = notices
    assert (kind, source, detail["severity"]) == ("source_broken", "broken", "warning")
    assert "aw_no_such_module" in detail["reason"]


def test_a_scenario_without_sources_simulates_nvml_and_the_tpu_when_it_has_a_tpu_table(tmp_path):
    assert scenario_sources("healthy") == ("nvml",)
    tpu = tmp_path / "tpu.toml"
    tpu.write_text('[tpu]\nchip = "v5e"\nchips = 8\n')
    assert scenario_sources(str(tpu)) == ("nvml", "tpu")


class _Handle:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def uninstall(self) -> None:
        self.log.append(f"uninstall {self.name}")


def test_a_scenario_installs_the_simulator_of_each_source_it_names(tmp_path):
    log: list[str] = []

    def simulator(name):
        def install(scenario, owner_pids):
            log.append(f"install {name} {Path(scenario).stem} {owner_pids()}")
            return _Handle(log, name)

        return install

    registry = _registry(
        _spec("alpha", simulator=simulator("alpha")),
        _spec("beta", simulator=simulator("beta")),
        _spec("gamma", simulator=simulator("gamma")),
    )
    scenario = tmp_path / "two.toml"
    scenario.write_text('sources = ["beta", "alpha"]\n')
    simulators = install_simulators(str(scenario), lambda: [42], registry)
    assert log == ["install beta two [42]", "install alpha two [42]"]
    simulators.uninstall()
    assert log[2:] == ["uninstall alpha", "uninstall beta"]


def test_a_failed_simulator_uninstalls_those_installed_before_it(tmp_path):
    log: list[str] = []

    def broken(scenario, owner_pids):
        raise ValueError("bad [beta] table")

    registry = _registry(
        _spec("alpha", simulator=lambda s, p: _Handle(log, "alpha")),
        _spec("beta", simulator=broken),
    )
    scenario = tmp_path / "two.toml"
    scenario.write_text('sources = ["alpha", "beta"]\n')
    with pytest.raises(UsageError, match=r"bad \[beta\] table"):
        install_simulators(str(scenario), list, registry)
    assert log == ["uninstall alpha"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('sources = ["nosuch"]\n', "simulates 'nosuch', which no installed source can simulate"),
        ('sources = ["plain"]\n', "simulates 'plain'"),  # registered, but without a simulator
        ("sources = []\n", "non-empty list"),
        ("sources = [\n", "invalid TOML"),
    ],
)
def test_a_scenario_naming_a_source_that_cannot_simulate_is_a_usage_error(tmp_path, text, message):
    scenario = tmp_path / "bad.toml"
    scenario.write_text(text)
    registry = _registry(_spec("plain"))
    with pytest.raises(UsageError, match=message):
        check_scenario(str(scenario), registry)
    with pytest.raises(UsageError, match=message):
        install_simulators(str(scenario), list, registry)


def test_a_sources_own_table_reaches_its_simulator(tmp_path):
    seen = []
    registry = _registry(
        _spec("alpha", simulator=lambda sc, pids: seen.append(load_scenario(sc).parts))
    )
    scenario = tmp_path / "a.toml"
    scenario.write_text('sources = ["alpha"]\n[alpha]\nrate = 3\n')
    check_scenario(str(scenario), registry)
    install_simulators(str(scenario), list, registry).uninstall()
    assert seen == [{"alpha": {"rate": 3}}]


def test_an_invalid_builtin_scenario_part_is_a_usage_error(tmp_path):
    scenario = tmp_path / "gpu.toml"
    scenario.write_text('[hardware]\nmodel = "no-such-gpu"\ncount = 1\n')
    with pytest.raises(UsageError, match="no-such-gpu"):
        check_scenario(str(scenario))


def test_a_registered_source_is_recorded_with_no_change_to_the_app(tmp_path, dummy_accelerator):
    """The dummy accelerator is registered only by the test: the session starts and records it."""
    dummy_accelerator.model.set(1, busy=0.5)
    db = tmp_path / "dummy.duckdb"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        session = Session(
            SessionConfig(db_path=str(db), interval=0.1, duration=0.5, live_analysis=False)
        )
        session.attach(child.pid)
        session.wait()
        session.finish()
    finally:
        child.kill()
        child.wait()
    rows = query(
        db,
        "SELECT entity, max(value) FROM samples WHERE source = 'dummy' AND metric = 'dummy.busy' "
        "GROUP BY entity ORDER BY entity",
    )
    assert rows == [("dev0", 0.0), ("dev1", 0.5)]


def test_the_builtin_sources_list_is_the_pyproject_entry_points():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from pathlib import Path

    from agent.app.sources import BUILTIN_SOURCES

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["accelwatch.sources"]
    assert declared == {name: f"{module}:SPEC" for name, module in BUILTIN_SOURCES.items()}


def test_missing_builtin_entry_points_fall_back_to_the_builtin_declarations_with_a_warning():
    from agent.app.sources import ensure_builtin_sources

    registry = _registry(PROCESS_SPEC)  # as if only the process entry point were installed
    [(kind, source, detail)] = ensure_builtin_sources(registry)
    assert (kind, source, detail["severity"]) == ("source_fallback", "agent", "warning")
    assert "host, disk, fabric, storage, nvml, tpu, steps" in detail["reason"]
    assert "pip install -e ." in detail["reason"]
    assert [s.name for s in registry.specs()] == [
        "process",
        "steps",  # start order 5: its socket is bound before the slower sources start
        "host",
        "disk",
        "fabric",
        "storage",
        "nvml",
        "tpu",
    ]
    assert ensure_builtin_sources(registry) == []  # once


def test_the_watched_tree_is_collected_first_even_if_its_source_is_not_registered():
    process = ProcessCollector(1)
    collectors, _ = candidate_collectors(process, _registry(make_spec(DummyModel())))
    assert collectors[0] is process and len(collectors) == 2


def _accelerator(name: str) -> SourceSpec:
    from agent.source import EntityKind

    return SourceSpec(
        name,
        name,
        (metric(f"{name}.busy", "1", "gauge", "busy", source=name, role="accelerator.busy"),),
        (EntityKind("accelerator", f"{name}[0-9]+"),),
    )


def test_an_absent_accelerator_is_no_news_once_another_accelerator_started():
    from agent.app.sources import quiet_absent_accelerators

    registry = _registry(_accelerator("gpuish"), _accelerator("tpuish"), _spec("fabricish"))
    unavailable = [
        ("collector_unavailable", "tpuish", {"reason": "no TPU chips"}),
        ("collector_unavailable", "fabricish", {"reason": "no ports"}),
    ]
    started = [DummyCollector(DummyModel())]
    started[0].source = "gpuish"
    assert quiet_absent_accelerators(started, unavailable, registry) == [
        ("source_absent", "tpuish", {"reason": "no TPU chips"}),
        ("collector_unavailable", "fabricish", {"reason": "no ports"}),
    ]
    # no accelerator at all: every reason stays a notice
    assert quiet_absent_accelerators([], unavailable, registry) == unavailable


def test_a_simulated_gpu_run_shows_no_notice_for_the_absent_tpu(tmp_path):
    db = tmp_path / "gpu.duckdb"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        session = Session(
            SessionConfig(
                db_path=str(db), interval=0.2, duration=0.6, live_analysis=False, simulate="healthy"
            )
        )
        session.attach(child.pid)
        notices = dict(session.startup_notices)
        session.wait()
        session.finish()
    finally:
        child.kill()
        child.wait()
    assert "tpu" not in notices
    rows = query(db, "SELECT kind, entity FROM events WHERE entity = 'tpu'")
    assert rows == [("source_absent", "tpu")]


def test_check_scenario_asks_each_source_to_validate_its_part(tmp_path):
    def check(scenario):
        raise ValueError(f"{Path(scenario).name}: [alpha] rate must be positive")

    registry = _registry(_spec("alpha", simulator=lambda s, p: None, check_scenario=check))
    scenario = tmp_path / "a.toml"
    scenario.write_text('sources = ["alpha"]\n[alpha]\nrate = -1\n')
    with pytest.raises(UsageError, match="a.toml: .alpha. rate must be positive"):
        check_scenario(str(scenario), registry)
