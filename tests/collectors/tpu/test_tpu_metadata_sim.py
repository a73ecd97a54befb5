"""The simulated GCE metadata server TPU scenarios start: the metadata paths against it
(present, absent = one notice, slow past the 1 s timeout) and a simulated run's node metadata."""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request

import pytest

from agent.source import CollectContext
from collectors.sim import ScenarioError
from collectors.sim.scenario import load_scenario, parse_scenario
from collectors.sim.tpu.metadata import node_attributes
from collectors.sim.tpu.vm import SimulatedTpu
from collectors.tpu import metadata
from collectors.tpu.collector import TpuCollector
from tests.helpers import VALUES_DEADLINE_S, query, run_cli


def _scenario(extra: str = "") -> object:
    text = f'sources = ["tpu"]\n[tpu]\nchip = "v5e"\nchips = 2\n{extra}'
    return parse_scenario(text, "meta.toml").tpu


@pytest.fixture
def vm(tmp_path):
    made = []

    def make(extra: str = "") -> SimulatedTpu:
        sim = SimulatedTpu(_scenario(extra), root=tmp_path / f"vm{len(made)}")
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.uninstall()


def _collector(sim: SimulatedTpu) -> TpuCollector:
    c = TpuCollector(env=sim.env, deadline=VALUES_DEADLINE_S)
    pid = os.getpid()
    c.start(CollectContext(pid, lambda: frozenset([pid])))
    return c


def test_a_simulated_tpu_vm_serves_its_node_metadata_with_the_google_flavor(vm):
    sim = vm()
    node = metadata.fetch(sim.metadata_url)
    assert node.notice is None
    assert node.accelerator_type == "v5litepod-2" and node.worker_number == 0
    assert node.worker_endpoints == ["10.130.0.2"]
    assert node.runtime_version == "v2-alpha-tpuv5-lite"
    assert len(sim.metadata.requests) == 4
    assert all(flavor == "Google" for _, flavor in sim.metadata.requests)


def test_the_simulated_metadata_server_refuses_requests_without_the_flavor_header(vm):
    sim = vm()
    url = f"{sim.metadata_url}/instance/attributes/accelerator-type"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=2)  # noqa: S310 - our own 127.0.0.1 server
    assert info.value.code == 403


def test_node_attributes_follow_the_chip_and_the_multi_host_layout():
    attrs = node_attributes("v5p", 4, worker_number=1, workers=2)
    assert attrs["accelerator-type"] == "v5p-16"
    assert attrs["agent-worker-number"] == "1"
    assert metadata.parse_endpoints(attrs["worker-network-endpoints"]) == [
        "10.130.0.2",
        "10.130.0.3",
    ]
    assert metadata.parse_tpu_env(attrs["tpu-env"])["RUNTIME_VERSION"] == "v2-alpha-tpuv5"


def test_metadata_present_lands_on_the_chips_and_the_runtime_entity(vm):
    sim = vm('[tpu.metadata]\nworker_number = 1\nworkers = 2\nruntime_version = "rt-9"\n')
    c = _collector(sim)
    try:
        batch = c.collect(time.time())
    finally:
        c.close()
    assert batch.entity_attrs["tpu"]["accelerator_type"] == "v5litepod-4"
    assert batch.entity_attrs["tpu"]["worker_number"] == 1
    assert batch.entity_attrs["tpu1"]["runtime_version"] == "rt-9"
    assert "tpu_metadata_unavailable" not in [e.kind for e in batch.events]


def test_metadata_absent_is_one_notice_over_the_whole_run(vm):
    sim = vm()
    sim.metadata.stop()  # the VM answers no more: as outside GCP
    c = _collector(sim)
    try:
        kinds = [e.kind for t in range(5) for e in c.collect(time.time() + t).events]
    finally:
        c.close()
    assert kinds.count("tpu_metadata_unavailable") == 1


def test_a_missing_attribute_is_an_absent_value_not_a_notice(vm):
    sim = vm('[tpu.metadata]\nabsent = ["tpu-env"]\n')
    node = metadata.fetch(sim.metadata_url)
    assert node.notice is None and node.runtime_version is None
    assert node.accelerator_type == "v5litepod-2"


def test_a_slow_metadata_server_costs_one_timeout_at_start_and_one_notice(vm):
    sim = vm("[tpu.metadata]\ndelay_s = 1.6\n")
    t0 = time.monotonic()
    c = _collector(sim)
    started_in = time.monotonic() - t0
    try:
        events = c.collect(time.time()).events
    finally:
        c.close()
    assert 0.9 <= started_in < 1.5  # the 1 s timeout, once, not once per attribute
    notices = [e for e in events if e.kind == "tpu_metadata_unavailable"]
    assert len(notices) == 1 and "timed out" in str(notices[0].detail)
    assert len(sim.metadata.requests) == 1


def test_a_scenario_may_say_its_vm_has_no_metadata_server(vm):
    sim = vm("[tpu.metadata]\noff = true\n")
    assert sim.metadata is None and sim.env["ACCELWATCH_TPU_METADATA_URL"] == "off"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("warp = 1", "unknown key 'warp'"),
        ("workers = 2\nworker_number = 2", "worker_number must be within"),
        ('absent = ["zone"]', "absent names 'zone'"),
        ('delay_s = "slow"', "delay_s has the wrong type"),
    ],
)
def test_bad_metadata_tables_are_one_line_errors(table, message):
    with pytest.raises(ScenarioError, match=message) as info:
        parse_scenario(f'[tpu]\nchip = "v5e"\n[tpu.metadata]\n{table}\n', "bad.toml")
    assert "\n" not in str(info.value)


def test_a_simulated_run_records_the_node_metadata(tmp_path):
    assert load_scenario("tpu-v5e-8-healthy").tpu.metadata == {}
    db = tmp_path / "meta.duckdb"
    result = run_cli(
        "run", "--headless", "--db", str(db), "--interval", "0.5",
        "--simulate", "tpu-v5e-8-healthy", "--", sys.executable, "-c", "import time; time.sleep(1)",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = query(
        db,
        "SELECT json_extract_string(attrs, '$.accelerator_type'), "
        "json_extract_string(attrs, '$.runtime_version') FROM entities WHERE entity = 'tpu'",
    )
    assert rows == [("v5litepod-8", "v2-alpha-tpuv5-lite")]
    kinds = [k for (k,) in query(db, "SELECT kind FROM events")]
    assert "tpu_metadata_unavailable" not in kinds


def test_sim_serve_serves_the_metadata_server_beside_the_runtime(tmp_path):
    import signal
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "sim", "serve", "tpu-v6e-runtime-late", "--port", "0",
         "--sys-root", str(tmp_path / "vm")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        proc.stdout.readline()
        exports = dict(
            proc.stdout.readline().strip().removeprefix("export ").split("=", 1) for _ in range(5)
        )
        node = metadata.fetch(exports["ACCELWATCH_TPU_METADATA_URL"])
        assert node.notice is None and node.accelerator_type == "v6e-8"
        assert exports["ACCELWATCH_TPU_METADATA_URL"].startswith("http://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
