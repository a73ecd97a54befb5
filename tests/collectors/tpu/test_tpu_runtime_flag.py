"""``--tpu-runtime HOST:PORT[,PORT...]`` and ``--sys-root``: checked before the job starts,
handed to the TPU collector through ``CollectContext`` (roots, ``options["tpu"]``), winning over
the ACCELWATCH_TPU_* environment fallbacks."""

from __future__ import annotations

import os
import sys

import pytest

from agent.app.cli import build_parser
from agent.app.commands import _config
from agent.source import CollectContext
from collectors.sim.scenario import load_scenario
from collectors.sim.tpu.vm import SimulatedTpu
from collectors.tpu.collector import TpuCollector
from tests.helpers import query, run_cli

CLEAN_ENV = {k: "" for k in os.environ if k.startswith("ACCELWATCH_TPU_")}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("localhost:http", "'http' is not a port"),
        ("10.0.0.2:9000,70000", "'70000' is not a port"),
        ("a:1,b:2", "one host, then its ports"),
    ],
)
def test_a_bad_tpu_runtime_is_one_usage_line_and_the_job_never_starts(tmp_path, value, message):
    marker = tmp_path / "started"
    job = f"open({str(marker)!r}, 'w').close()"
    result = run_cli(
        "run", "--headless", "--db", str(tmp_path / "x.duckdb"), "--tpu-runtime", value,
        "--", sys.executable, "-c", job,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not marker.exists() and not (tmp_path / "x.duckdb").exists()


@pytest.mark.parametrize("command", ["run", "attach", "demo"])
def test_tpu_runtime_reaches_the_session_as_a_tpu_source_option(command):
    target = {"run": ["--", "true"], "attach": ["1"], "demo": []}[command]
    args = build_parser().parse_args(
        [command, "--tpu-runtime", "10.0.0.2:8431,8432", "--headless", *target]
    )
    config = _config(args)
    assert config.source_options == {"tpu": {"runtime": "10.0.0.2:8431,8432"}}


def test_without_the_flag_no_source_option_is_set():
    args = build_parser().parse_args(["run", "--headless", "--", "true"])
    assert _config(args).source_options == {}


@pytest.fixture
def served(tmp_path):
    sim = SimulatedTpu(load_scenario("tpu-v5e-8-healthy").tpu, root=tmp_path / "vm")
    yield sim
    sim.uninstall()


def test_context_roots_and_runtime_option_win_over_the_environment(served, tmp_path):
    wrong = {
        "ACCELWATCH_TPU_SYS_ROOT": str(tmp_path / "nowhere"),
        "ACCELWATCH_TPU_RUNTIME": "127.0.0.1:1",
        "ACCELWATCH_TPU_METADATA_URL": "off",
    }
    collector = TpuCollector(env=wrong)
    ctx = CollectContext(
        sys_root=str(served.root / "sys"),
        options={"tpu": {"runtime": served.server.address}},
    )
    try:
        collector.start(ctx)
        assert len(collector.chips) == 8
        assert collector.dev_root == str(served.root / "dev")  # beside the captured sys/
        assert [ep.target for ep in collector.client.endpoints] == [served.server.address]
    finally:
        collector.close()


def test_the_environment_is_the_fallback_when_the_command_line_is_silent(served):
    collector = TpuCollector(env=served.env)
    try:
        collector.start(CollectContext())
        assert (
            len(collector.chips) == 8
            and collector.sys_root == served.env["ACCELWATCH_TPU_SYS_ROOT"]
        )
        assert [ep.target for ep in collector.client.endpoints] == [served.server.address]
    finally:
        collector.close()


def test_run_records_the_runtime_named_by_tpu_runtime_and_the_chips_under_sys_root(
    served, tmp_path
):
    db = tmp_path / "flag.duckdb"
    result = run_cli(
        "run", "--headless", "--db", str(db), "--interval", "0.5",
        "--tpu-runtime", served.server.address, "--sys-root", str(served.root / "sys"),
        "--", sys.executable, "-c", "import time; time.sleep(2)",
        env={**CLEAN_ENV, "ACCELWATCH_TPU_METADATA_URL": "off"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = query(
        db,
        "SELECT count(DISTINCT entity) FROM samples WHERE metric = 'tpu.duty_cycle' "
        "AND value >= 0.89",
    )
    assert rows == [(8,)]
    kinds = [k for (k,) in query(db, "SELECT kind FROM events WHERE entity = 'tpu'")]
    assert "tpu_runtime_up" in kinds
