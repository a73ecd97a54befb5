"""``accelwatch runs``: each run's numbers as an experiment, filters, typed JSON, few queries."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from agent.runs import LocalReadConnection, list_runs, open_read
from tests.experiments.recordings import Recording, record
from tests.helpers import run_cli


def test_runs_json_has_typed_steps_throughput_activity_energy_and_top_finding(tmp_path):
    db = record(
        tmp_path / "r.duckdb",
        Recording("r1", name="bert", step_time=0.2, busy=0.5, power_w=300.0, gpus=2,
                  findings=["dataloader-bound"], tags={"lr": "1e-3"}),
    )  # fmt: skip
    done = run_cli("runs", "--db", str(db), "--json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)
    assert run["steps"] == 150 and isinstance(run["steps"], int)
    assert run["step_time_mean_s"] == pytest.approx(0.2)
    assert run["throughput_steps_s"] == pytest.approx(150 / 30)
    assert run["accel_busy_mean"] == pytest.approx(0.5)
    # The cumulative counter reaches 300 W x 30 s on each of the two GPUs.
    assert run["energy_j"] == pytest.approx(2 * 300 * 30)
    assert run["energy_per_step_j"] == pytest.approx(2 * 300 * 30 / 150)
    assert run["duration_s"] == pytest.approx(30)
    assert run["top_finding"]["rule"] == "dataloader-bound"
    started = datetime.fromisoformat(run["started"])
    assert started.utcoffset() is not None and started.timestamp() == pytest.approx(1.7e9)


def test_runs_text_shows_the_numbers_and_the_top_finding(tmp_path):
    db = record(tmp_path / "r.duckdb", Recording("r1", name="bert", step_time=0.25,
                                                  findings=["io-bound"]))  # fmt: skip
    done = run_cli("runs", "--db", str(db))
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    for column in ("STEPS", "STEP", "STEPS/S", "ACCEL", "ENERGY", "TOP FINDING"):
        assert column in header
    assert "120" in row and "0.25 s" in row and "io-bound" in row and "90%" in row


def test_runs_filters_by_tag_and_name(tmp_path):
    db = tmp_path / "many.duckdb"
    record(
        db,
        Recording("a", name="bert-base", tags={"team": "nlp", "lr": "1e-3"}),
        Recording("b", name="bert-large", tags={"team": "nlp", "lr": "3e-4"}, t0=1.7e9 + 100),
        Recording("c", name="resnet", tags={"team": "vision"}, t0=1.7e9 + 200),
    )

    def ids(*args):
        done = run_cli("runs", "--db", str(db), "--json", *args)
        assert done.returncode == 0, done.stderr
        return [r["run_id"] for r in json.loads(done.stdout)]

    assert ids("--tag", "team=nlp") == ["a", "b"]
    assert ids("--tag", "team=nlp", "--tag", "lr=3e-4") == ["b"]
    assert ids("--name", "bert-*") == ["a", "b"]
    assert ids("--name", "res") == ["c"]
    assert ids("--name", "bert*", "--tag", "team=vision") == []
    none = run_cli("runs", "--db", str(db), "--tag", "team=audio")
    assert none.returncode == 0 and "no matching runs" in none.stdout


def test_runs_tag_filter_without_equals_is_one_line_and_exit_2(tmp_path):
    db = record(tmp_path / "r.duckdb", Recording("r1"))
    done = run_cli("runs", "--db", str(db), "--tag", "team")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr


def test_runs_of_a_real_simulated_recording_show_accelerator_activity_and_energy(simulated_db):
    done = run_cli("runs", "--db", str(simulated_db), "--json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)
    assert run["name"] == "sim-healthy" and run["tags"] == {"team": "ml"}
    assert run["accelerators"] == 8 and run["accel_busy_mean"] > 0.9
    assert run["energy_j"] > 0 and run["steps"] is None and run["throughput_steps_s"] is None


class CountingConnection(LocalReadConnection):
    def __init__(self, db):
        super().__init__(db.duckdb, db.paths)
        self.statements = 0

    def execute(self, sql, params=()):
        self.statements += 1
        return super().execute(sql, params)


def test_runs_stats_take_the_same_few_statements_for_one_run_or_forty(tmp_path):
    one = record(tmp_path / "one.duckdb", Recording("r0", seconds=5))
    many = record(
        tmp_path / "many.duckdb",
        *(Recording(f"r{i}", seconds=5, t0=1.7e9 + 10 * i) for i in range(40)),
    )
    counts = []
    for db in (one, many):
        con = CountingConnection(open_read(db))
        try:
            rows = list_runs(con, stats=True)
        finally:
            con.close()
        assert all(r["steps"] == 50 for r in rows)
        counts.append(con.statements)
    assert counts[0] == counts[1] <= 5, counts  # runs, tags (check + rows), stats, findings
