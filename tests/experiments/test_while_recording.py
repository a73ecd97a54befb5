"""The experiment commands next to a real recording in progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import REPO, accelwatch, run_cli, wait_until


def _samples(db) -> int:
    done = run_cli("sql", "SELECT count(*) AS n FROM samples", "--db", str(db), "--json")
    return json.loads(done.stdout)[0]["n"] if done.returncode == 0 else 0


def test_runs_export_and_globs_beside_a_run_being_recorded(tmp_path, baseline_and_candidate):
    live = tmp_path / "live.duckdb"
    done = tmp_path / "done"  # the job trains until the test has read what it wanted
    job = f"import os, time\nwhile not os.path.exists({str(done)!r}): time.sleep(0.1)"
    env = {k: v for k, v in os.environ.items() if k != "ACCELWATCH_DB"}
    agent = subprocess.Popen(
        [*accelwatch("run", "--headless", "--simulate", "healthy", "--interval", "0.2", "--db",
                     str(live), "--name", "live-job", "--"),
         sys.executable, "-c", job],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        assert wait_until(lambda: os.path.exists(f"{live}.sock"), timeout=30)
        assert wait_until(lambda: _samples(live) > 0, timeout=30)
        alone = run_cli("runs", "--db", str(live), "--json")  # through the agent, with numbers
        assert alone.returncode == 0, alone.stderr
        (run,) = json.loads(alone.stdout)
        assert run["status"] == "running" and run["accel_busy_mean"] > 0.9
        assert run["db_path"] == str(live)
        among = run_cli("runs", "--db", str(tmp_path / "*.duckdb"), "--json")
        assert among.returncode == 0, among.stderr
        assert [r["run_id"] for r in json.loads(among.stdout)] == ["run-a", "run-b"]
        assert among.stderr.count("\n") == 1 and f"skipping {live}" in among.stderr
        export = run_cli("export", "live-job", "--db", str(live), "--out", str(tmp_path / "o"))
        assert export.returncode == 4 and export.stderr.count("\n") == 1, export.stderr
        assert "being recorded" in export.stderr and not (tmp_path / "o").exists()
    finally:
        done.write_text("")
        assert agent.wait(timeout=60) == 0
