"""The resident-memory timer thread is named in the kernel like the agent's other threads."""

from __future__ import annotations

from agent.app.resident import release_later


def test_the_resident_timer_thread_is_named_in_the_kernel(monkeypatch):
    """It starts after the session named its threads: ``top -H`` must still tell it apart."""
    monkeypatch.setenv("ACCELWATCH_KEEP_CODE_RESIDENT", "1")  # not the release itself
    timer = release_later(60.0)
    try:
        with open(f"/proc/self/task/{timer.native_id}/comm") as f:
            assert f.read().strip() == "aw-resident"
    finally:
        timer.cancel()
        timer.join(5)
