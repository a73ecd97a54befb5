"""The real CLI on simulated GPUs: `run --simulate`, `demo`, `scenarios`, read back from DuckDB."""

from __future__ import annotations

import ctypes.util
import json
import sys

import pytest

from tests.helpers import query, run_cli


def _gpu_attrs(db) -> dict[str, dict]:
    rows = query(db, "SELECT entity, attrs FROM entities WHERE source = 'nvml'")
    return {entity: json.loads(attrs) for entity, attrs in rows}


def test_run_on_simulated_gpus_records_them_and_matches_the_job(tmp_path):
    db = tmp_path / "sim.duckdb"
    result = run_cli(
        "run",
        "--headless",
        "--simulate",
        "healthy",
        "--db",
        str(db),
        "--interval",
        "0.2",
        "--",
        sys.executable,
        "-c",
        "import time; time.sleep(3)",
    )
    assert result.returncode == 0, result.stderr
    [(run_id, pid, simulated, scenario)] = query(
        db, "SELECT run_id, pid, simulated, scenario FROM runs"
    )
    assert (simulated, scenario) == (True, "healthy")
    per_gpu = dict(
        query(
            db,
            "SELECT entity, count(*) FROM samples WHERE source = 'nvml' "
            "AND metric = 'gpu.utilization' GROUP BY entity",
        )
    )
    assert sorted(per_gpu) == [f"gpu{i}" for i in range(8)]
    assert min(per_gpu.values()) >= 5
    attrs = _gpu_attrs(db)
    assert all(attrs[f"gpu{i}"]["used_by_job"] for i in range(8))
    assert attrs[f"gpu0/pid{pid}"] == {"pid": pid, "gpu": "gpu0", "job": True}
    metrics = {m for (m,) in query(db, "SELECT DISTINCT metric FROM samples WHERE source = 'nvml'")}
    assert {
        "gpu.sm.activity",
        "gpu.nvlink.tx_throughput",
        "gpu.pcie.rx_throughput",
        "gpu.energy",
        "gpu.job.memory",
    } <= metrics
    kinds = {k for (k,) in query(db, "SELECT DISTINCT kind FROM events")}
    unavailable = {
        e for (e,) in query(db, "SELECT entity FROM events WHERE kind = 'collector_unavailable'")
    }
    # the simulated GPUs are there; other sources (a TPU on this machine) may be absent
    assert "nvml" not in unavailable and "nvml_error" not in kinds


def test_demo_runs_the_example_job_on_simulated_gpus(tmp_path):
    db = tmp_path / "demo.duckdb"
    result = run_cli(
        "demo", "healthy", "--headless", "--steps", "20", "--interval", "0.2", "--db", str(db)
    )
    assert result.returncode == 0, result.stderr
    [(name, status, simulated)] = query(db, "SELECT name, status, simulated FROM runs")
    assert (name, status, simulated) == ("demo-healthy", "finished", True)
    job = {int(e) for (e,) in query(db, "SELECT entity FROM entities WHERE source = 'process'")}
    on_gpus = {a["pid"] for e, a in _gpu_attrs(db).items() if "/pid" in e and a["job"]}
    assert on_gpus and on_gpus <= job  # the GPUs' processes are the job's own
    [(busiest,)] = query(db, "SELECT max(value) FROM samples WHERE metric = 'gpu.job.processes'")
    assert busiest >= 1


def test_scenarios_json_lists_every_named_scenario():
    result = run_cli("scenarios", "--json")
    assert result.returncode == 0, result.stderr
    scenarios = {s["name"]: s for s in json.loads(result.stdout)}
    assert {"healthy", "gpu-lost", "h100-mig", "consumer-card", "a100-healthy"} <= set(scenarios)
    assert scenarios["healthy"]["gpu_count"] == 8 and "H100" in scenarios["healthy"]["hardware"]


def test_unknown_scenario_is_a_one_line_error_and_no_database(tmp_path):
    db = tmp_path / "never.duckdb"
    for args in (
        (
            "run",
            "--headless",
            "--simulate",
            "no-such-scenario",
            "--db",
            str(db),
            "--",
            sys.executable,
            "-c",
            "pass",
        ),
        ("demo", "no-such-scenario", "--headless", "--db", str(db)),
    ):
        result = run_cli(*args)
        assert result.returncode == 2
        assert (
            result.stderr.count("\n") == 1
            and "unknown scenario 'no-such-scenario'" in result.stderr
        )
        assert "Traceback" not in result.stderr
    assert not db.exists()


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="a real NVIDIA driver"
)
def test_without_simulation_the_gpu_collector_is_reported_unavailable(tmp_path):
    db = tmp_path / "nogpu.duckdb"
    result = run_cli(
        "run",
        "--headless",
        "--db",
        str(db),
        "--interval",
        "0.2",
        "--",
        sys.executable,
        "-c",
        "import time; time.sleep(0.5)",
    )
    assert result.returncode == 0, result.stderr
    [(detail,)] = query(
        db, "SELECT detail FROM events WHERE kind = 'collector_unavailable' AND entity = 'nvml'"
    )
    assert "--simulate" in json.loads(detail)["reason"]
    assert query(db, "SELECT count(*) FROM samples WHERE source = 'nvml'") == [(0,)]
