"""End to end through the CLI: a simulated hang is found live and in the closing report."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent.store import connect


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ACCELWATCH_SLOW"), reason="set ACCELWATCH_SLOW=1")
def test_headless_run_reports_a_hang_live_and_at_the_end(tmp_path):
    db = tmp_path / "e2e.duckdb"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--headless",
            "--simulate",
            "hang",
            "--db",
            str(db),
            "--",
            "sleep",
            "70",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "WARNING Hang [hang] on job" in out.stdout
    con = connect(db, read_only=True)
    try:
        rows = con.execute(
            "SELECT live, epoch(start_ts) - (SELECT epoch(started) FROM runs) FROM findings "
            "WHERE rule = 'hang' ORDER BY live"
        ).fetchall()
    finally:
        con.close()
    assert [live for live, _ in rows] == [False, True]
    assert all(18 <= start <= 24 for _, start in rows)  # the deadlock begins at 20 s
