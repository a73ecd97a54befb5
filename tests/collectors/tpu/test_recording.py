"""`accelwatch run --simulate tpu-...`: a real job recorded with its simulated TPU VM."""

from __future__ import annotations

import sys

from tests.helpers import query, run_cli


def test_run_records_simulated_tpu_chips_held_by_the_job_and_keeps_its_exit_code(tmp_path):
    db = tmp_path / "tpu.duckdb"
    job = "import time, sys; time.sleep(3); sys.exit(7)"
    result = run_cli(
        "run", "--headless", "--db", str(db), "--interval", "0.5",
        "--simulate", "tpu-v5e-8-healthy", "--", sys.executable, "-c", job,
    )  # fmt: skip
    assert result.returncode == 7, result.stderr  # the job's exit code
    rows = dict(
        query(
            db,
            "SELECT metric, count(DISTINCT entity) FROM samples WHERE source = 'tpu' "
            "AND entity LIKE 'tpu_%' GROUP BY metric",
        )
    )
    assert rows["tpu.duty_cycle"] == rows["tpu.memory.used"] == 8
    held = query(db, "SELECT max(value) FROM samples WHERE metric = 'tpu.job.processes'")
    assert held == [(1.0,)]  # the simulated job holds its chips
    kinds = [k for (k,) in query(db, "SELECT kind FROM events WHERE entity = 'tpu'")]
    assert kinds.count("tpu_runtime_up") == 1 and "collector_unavailable" not in kinds


def test_a_late_runtime_is_recorded_as_a_state_not_an_error(tmp_path):
    db = tmp_path / "late.duckdb"
    result = run_cli(
        "run", "--headless", "--db", str(db), "--interval", "0.5",
        "--simulate", "tpu-v6e-runtime-late", "--", sys.executable, "-c", "import time; time.sleep(2)",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    down = query(db, "SELECT detail FROM events WHERE kind = 'tpu_runtime_down'")
    assert len(down) == 1 and '"severity": "info"' in down[0][0]
    assert query(db, "SELECT DISTINCT value FROM samples WHERE metric = 'tpu.runtime.up'") == [
        (0.0,)
    ]
