"""The session's wait sleeps until something happens: the job's end, a stop request, a tick."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from agent.app import session_wait
from agent.app.session import Session, SessionConfig


def _wakeups(native_id: int) -> int:
    """Times a thread of this process was woken from a sleep (its voluntary switches)."""
    with open(f"/proc/self/task/{native_id}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


def _session(tmp_path, **kw) -> Session:
    return Session(
        SessionConfig(db_path=str(tmp_path / "w.duckdb"), live_analysis=False, quiet=True, **kw)
    )


def _wait_in_thread(session: Session, **kw) -> tuple[threading.Thread, list[float]]:
    returned: list[float] = []

    def waiting() -> None:
        session.wait(**kw)
        returned.append(time.monotonic())

    thread = threading.Thread(target=waiting, name="test-wait")
    thread.start()
    while thread.native_id is None:
        time.sleep(0.01)
    return thread, returned


def test_wait_sleeps_until_the_job_exits_and_returns_at_once(tmp_path):
    """It checked four times a second; now the job's pidfd wakes it when the job exits."""
    marker = tmp_path / "exited"
    session = _session(tmp_path, interval=0.5)
    code = f"import time; time.sleep(3.5); open({str(marker)!r}, 'w').write(repr(time.time()))"
    session.launch([sys.executable, "-c", code])
    thread, returned = _wait_in_thread(session)
    time.sleep(0.3)
    before = _wakeups(thread.native_id)
    time.sleep(1.0)  # the job still sleeps
    slept = _wakeups(thread.native_id) - before
    thread.join(10)
    ended = time.time()
    run = session.finish()
    exited = float(marker.read_text())
    assert slept <= 1  # asleep while the job ran (it woke 4 times in that second before)
    assert returned and ended - exited < 0.5
    assert run.status == "finished" and run.exit_code == 0


def test_a_stop_request_from_another_thread_ends_the_wait_at_once(tmp_path):
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        session = _session(tmp_path, interval=0.5)
        session.attach(target.pid)
        thread, returned = _wait_in_thread(session)
        time.sleep(0.5)
        asked = time.monotonic()
        session.request_stop("viewer closed")
        thread.join(10)
        session.finish()
    finally:
        target.kill()
        target.wait()
    assert returned and returned[0] - asked < 0.2
    assert session.stop_reason == "viewer closed"


def test_with_a_per_tick_callback_each_tick_wakes_the_wait_and_nothing_else(tmp_path):
    session = _session(tmp_path, interval=0.5)
    session.launch([sys.executable, "-c", "import time; time.sleep(4)"])
    calls: list[int] = []

    def on_tick() -> None:
        latest = session.hub.latest
        calls.append(-1 if latest is None else latest.seq)

    session.wait(on_tick=on_tick)
    session.finish()
    ticks = len(set(calls))
    assert ticks >= 4  # about one tick every 0.5 s while the job ran
    assert len(calls) <= ticks + 2  # woken by ticks, not by a timer


def test_without_a_pidfd_the_wait_still_ends_when_the_job_exits(tmp_path, monkeypatch):
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    session = _session(tmp_path, interval=5.0)
    session.launch([sys.executable, "-c", "pass"])
    started = time.monotonic()
    session.wait()
    waited = time.monotonic() - started
    run = session.finish()
    assert session._end_watch is not None and session._end_watch.pidfd is None
    assert waited < 5 * session_wait.FALLBACK_POLL_S + 2 and run.status == "finished"


def test_a_stop_withdrawn_at_once_still_ends_every_wait_that_was_sleeping(tmp_path):
    """A viewer's worker and the main thread may wait at once; a detach asks to stop and
    withdraws it (``resume_after_viewer``) before the worker wakes: the worker still returns."""
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        session = _session(tmp_path, interval=0.5)
        session.attach(target.pid)
        first, first_returned = _wait_in_thread(session)
        second, second_returned = _wait_in_thread(session)
        time.sleep(0.3)
        session.request_stop("viewer closed")
        session.resume_after_viewer()
        first.join(5)
        second.join(5)
        session.finish()
    finally:
        target.kill()
        target.wait()
    assert first_returned and second_returned
    assert not session.stop_requested.is_set()  # withdrawn: recording would go on
