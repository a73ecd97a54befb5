"""Session behaviour that the CLI relies on."""

from __future__ import annotations

import os
import stat
import sys

from agent.app.session import Session, SessionConfig
from agent.store import connect


def test_job_output_goes_to_a_private_log_when_the_tui_owns_the_terminal(tmp_path):
    log = tmp_path / "job.log"
    config = SessionConfig(
        db_path=str(tmp_path / "s.duckdb"), interval=0.1, job_log=str(log), live_analysis=False
    )
    session = Session(config)
    session.launch(
        [
            sys.executable,
            "-c",
            "import sys; print('to stdout'); print('to stderr', file=sys.stderr)",
        ]
    )
    session.wait()
    run = session.finish()
    assert run.exit_code == 0 and run.status == "finished"
    assert log.read_text().splitlines() == ["to stdout", "to stderr"] or sorted(
        log.read_text().splitlines()
    ) == ["to stderr", "to stdout"]
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    con = connect(tmp_path / "s.duckdb", read_only=True)
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] > 0


def test_headless_recording_keeps_heavy_libraries_out_of_the_agent(tmp_path):
    """pyarrow, Textual and OpenTelemetry cost ~35-60 MB each: the agent loads them only on demand."""
    import subprocess

    code = f"""
import sys
from agent.app.session import Session, SessionConfig
s = Session(SessionConfig(db_path={str(tmp_path / "h.duckdb")!r}, interval=0.1))
s.launch([sys.executable, "-c", "import time; time.sleep(0.5)"])
s.wait()
s.finish()
print(sorted(m for m in ("pyarrow", "pandas", "textual", "opentelemetry") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
