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


class _SlowToStop:
    """A consumer whose shutdown takes a while (an exporter's final export)."""

    def start(self, context) -> None:
        pass

    def stop(self) -> None:
        import time

        time.sleep(1.5)


def test_consumers_are_built_before_the_job_starts_and_a_refusal_leaves_nothing(
    tmp_path, monkeypatch
):
    import pytest

    from agent.errors import UsageError

    def refuse(self):
        raise UsageError("cannot serve Prometheus metrics on 127.0.0.1:9: in use")

    monkeypatch.setattr(Session, "_build_consumers", refuse)
    marker = tmp_path / "started"
    db = tmp_path / "r.duckdb"
    session = Session(SessionConfig(db_path=str(db), interval=0.1, live_analysis=False))
    with pytest.raises(UsageError):
        session.launch([sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert session.child is None and not marker.exists()
    assert not db.exists() and not (tmp_path / "r.duckdb.wal").exists()


def test_run_ends_when_the_job_exits_not_after_consumers_shut_down(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(Session, "_build_consumers", lambda self: [_SlowToStop()])
    session = Session(
        SessionConfig(db_path=str(tmp_path / "e.duckdb"), interval=0.1, live_analysis=False)
    )
    session.launch([sys.executable, "-c", "pass"])
    session.wait()
    exited = time.time()
    run = session.finish()
    assert run.ended <= exited + 0.05
    assert run.ended - run.started < 1.5


def test_stop_requests_escalate_sigint_sigterm_and_sigkill_only_after_the_grace(tmp_path):
    import signal
    import subprocess

    from agent.app.job import JobSignals

    now = [0.0]
    notes: list[tuple] = []
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_IGN)\n"
            "print('up', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout.readline() == b"up\n"
        job = JobSignals(
            child,
            stop_timeout=30,
            own_group=False,
            note=lambda *a, **k: notes.append((a, k)),
            clock=lambda: now[0],
        )
        assert "SIGINT" in job.request_stop()
        assert "SIGTERM" in job.request_stop()
        now[0] = 29.0
        assert "ask again in 1s" in job.request_stop()
        assert child.poll() is None  # ignoring both, still alive: nobody killed it
        now[0] = 30.0
        assert "SIGKILL" in job.request_stop()
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    sent = [k["signal"] for a, k in notes if a[0] == "job_signal"]
    assert sent == ["SIGINT", "SIGTERM", "SIGKILL"]


def test_the_agents_threads_carry_their_names_in_the_kernel():
    """``top -H`` and the benchmarks tell the sampler from the store writer by name."""
    import threading

    from agent.app.os_process import name_os_threads

    started, done = threading.Event(), threading.Event()
    worker = threading.Thread(
        target=lambda: (started.set(), done.wait(5)), name="accelwatch-sampler", daemon=True
    )
    worker.start()
    started.wait(5)
    try:
        name_os_threads()
        with open(f"/proc/self/task/{worker.native_id}/comm") as f:
            assert f.read().strip() == "aw-sampler"
    finally:
        done.set()
        worker.join()
