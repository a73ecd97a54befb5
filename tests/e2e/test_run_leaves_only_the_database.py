"""A finished ``accelwatch run`` leaves its database and nothing else beside it."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_finished_run_leaves_no_spill_directory_beside_its_database(tmp_path):
    db = tmp_path / "run.duckdb"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--headless",
            "--interval",
            "0.2",
            "--db",
            str(db),
            "--",
            sys.executable,
            "-c",
            "import time; time.sleep(0.6)",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    # The post-run report reopens the file read-write; its spill directory went with it.
    assert "Findings" in done.stdout, done.stdout
    assert sorted(os.listdir(tmp_path)) == ["run.duckdb"]
