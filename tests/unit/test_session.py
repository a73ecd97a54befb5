"""Session behaviour that the CLI relies on."""

from __future__ import annotations

import os
import stat
import sys

from agent.session import Session, SessionConfig
from agent.store import connect


def test_job_output_goes_to_a_private_log_when_the_tui_owns_the_terminal(tmp_path):
    log = tmp_path / "job.log"
    config = SessionConfig(db_path=str(tmp_path / "s.duckdb"), interval=0.1, job_log=str(log),
                           live_analysis=False)
    session = Session(config)
    session.launch([sys.executable, "-c", "import sys; print('to stdout'); "
                    "print('to stderr', file=sys.stderr)"])
    session.wait()
    run = session.finish()
    assert run.exit_code == 0 and run.status == "finished"
    assert log.read_text().splitlines() == ["to stdout", "to stderr"] or \
        sorted(log.read_text().splitlines()) == ["to stderr", "to stdout"]
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    con = connect(tmp_path / "s.duckdb", read_only=True)
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
