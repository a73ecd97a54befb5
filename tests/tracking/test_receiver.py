"""The agent's socket: private, refusing what is not ours, bounded under a flood from 8 ranks."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time

import pytest

from accelwatch import _wire
from agent.errors import CollectorUnavailable
from agent.source import CollectContext
from agent.tracking import aggregate
from agent.tracking.aggregate import Aggregator
from agent.tracking.collector import TrackingCollector
from agent.tracking.receiver import Receiver, ReceiverError
from tests.tracking.conftest import PYTHON, child_env, script


def test_socket_is_0600_in_a_0700_dir(receiver, runtime_dir):
    assert stat.S_IMODE(os.stat(runtime_dir).st_mode) == 0o700
    st = os.stat(receiver.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_closing_removes_the_socket_and_the_dir_it_made(runtime_dir):
    rx = Receiver(os.path.join(runtime_dir, "a.sock"), Aggregator())
    rx.start()
    rx.close()
    assert not os.path.exists(rx.path) and not os.path.exists(runtime_dir)


def test_an_open_runtime_dir_of_ours_is_made_private(runtime_dir):
    os.makedirs(runtime_dir)
    os.chmod(runtime_dir, 0o755)
    rx = Receiver(os.path.join(runtime_dir, "a.sock"), Aggregator())
    rx.start()
    try:
        assert stat.S_IMODE(os.stat(runtime_dir).st_mode) == 0o700
    finally:
        rx.close()


def test_a_symlinked_runtime_dir_is_refused(runtime_dir, tmp_path):
    os.symlink(tmp_path, runtime_dir)
    with pytest.raises(ReceiverError, match="not a directory"):
        Receiver(os.path.join(runtime_dir, "a.sock"), Aggregator()).start()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(receiver, runtime_dir):
    with pytest.raises(ReceiverError, match="another agent"):
        Receiver(receiver.path, Aggregator()).start()
    stale = os.path.join(runtime_dir, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(stale)
    s.close()
    rx = Receiver(stale, Aggregator())
    rx.start()
    rx.close()


def test_collector_without_a_job_or_with_a_bad_dir_is_unavailable(runtime_dir, tmp_path):
    with pytest.raises(CollectorUnavailable, match="no job"):
        TrackingCollector().start(CollectContext())
    os.symlink(tmp_path, runtime_dir)
    with pytest.raises(CollectorUnavailable, match="training client socket"):
        TrackingCollector().start(CollectContext(root_pid=os.getpid()))


def test_garbage_datagrams_are_counted_and_noted(receiver):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"not ours", receiver.path)
    s.sendto(_wire.encode({"v": 1, "pid": 1}, [("zz", 1.0), ("l", "x")]), receiver.path)
    s.close()
    deadline = time.monotonic() + 5
    while receiver.aggregator.counters.messages < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    tick = receiver.aggregator.take()
    c = receiver.aggregator.counters
    assert (c.bad_datagrams, c.bad_messages) == (1, 2)
    assert [n[0] for n in tick.notes] == ["train_bad_message"]


def thread_wakeups(native_id: int) -> int:
    """Times a thread of this process went to sleep and was woken (its voluntary switches)."""
    with open(f"/proc/self/task/{native_id}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


def test_an_idle_receiver_sleeps_until_a_datagram_and_stops_at_once(receiver):
    """No timeout to wake on: idle for a second, the drain thread is never woken (it woke 4
    times a second before); a datagram is still taken at once, and close() is immediate."""
    thread = receiver._thread
    assert thread is not None and thread.native_id is not None
    time.sleep(0.2)
    before = thread_wakeups(thread.native_id)
    time.sleep(1.0)
    assert thread_wakeups(thread.native_id) - before <= 1
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(_wire.encode({"v": 1, "pid": 1}, [("zz", 1.0)]), receiver.path)
    s.close()
    deadline = time.monotonic() + 5
    while receiver.aggregator.counters.messages < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert receiver.aggregator.counters.messages == 1
    started = time.monotonic()
    receiver.close()
    # woken, not timed out: close() would otherwise wait out its 2 s join
    assert time.monotonic() - started < 1.0 and not thread.is_alive()


FLOOD = """
import os, time, accelwatch
end = time.monotonic() + float(os.environ["FLOOD_S"])
n = 0
while time.monotonic() < end:
    accelwatch.log(a=1.0, b=2.0, c=3.0, d=4.0, e=5.0)
    n += 1
    if n % 64 == 0:
        accelwatch.step()
accelwatch.flush()
s = accelwatch.stats()
print(n, s["sent"], s["dropped"], flush=True)
"""


def test_flood_from_8_ranks_is_bounded_and_counted(tmp_path, runtime_dir, monkeypatch):
    """8 ranks log as fast as they can: what a tick holds stays capped, every loss is counted."""
    monkeypatch.setattr(aggregate, "MAX_TICK_VALUES", 4000)
    monkeypatch.setattr(aggregate, "MAX_RANK_VALUES", 1000)
    collector = TrackingCollector()
    collector.start(CollectContext(root_pid=os.getpid()))
    job = script(tmp_path, FLOOD)
    try:
        ranks = [
            subprocess.Popen(
                [PYTHON, str(job)],
                stdout=subprocess.PIPE,
                text=True,
                env=child_env(ACCELWATCH_SOCKET=collector.path, RANK=str(r), FLOOD_S="1.5"),
            )
            for r in range(8)
        ]
        largest, rows, events = 0, 0, []
        while any(p.poll() is None for p in ranks):
            time.sleep(0.2)
            batch = collector.collect(time.time())
            kept = len(batch.records.get("train_metrics", {}).get("value", ()))
            largest, rows = max(largest, kept), rows + kept
            events += [e.kind for e in batch.events]
        outs = [p.communicate(timeout=30)[0].split() for p in ranks]
        time.sleep(0.3)
        batch = collector.collect(time.time())
        rows += len(batch.records.get("train_metrics", {}).get("value", ()))
        events += [e.kind for e in batch.events]
        health = collector.health()
    finally:
        collector.close()
    calls = sum(int(o[0]) for o in outs)
    client_dropped = sum(int(o[2]) for o in outs)
    assert all(p.returncode == 0 for p in ranks)
    assert largest <= 4000  # the agent's memory per tick is capped...
    assert health["tracking.ranks"] == 8
    lost = health["tracking.dropped_in_agent"] + health["tracking.dropped_in_client"]
    assert lost > 0 and "train_dropped" in events  # ...and what it cost is counted and noted
    # every call is accounted for: kept, dropped by the agent, dropped or still queued in a client
    assert rows + health["tracking.dropped_in_agent"] <= calls * 5
    assert health["tracking.dropped_in_client"] <= client_dropped


def test_drops_are_a_health_state_and_counters_while_they_happen(monkeypatch):
    from agent.health_text import ProblemWatch, health_phrases

    monkeypatch.setattr(aggregate, "MAX_TICK_VALUES", 10)
    monkeypatch.setattr(aggregate, "MAX_RANK_VALUES", 10)
    collector = TrackingCollector()  # fed directly: the socket is tested above
    header = {"v": 1, "pid": 4242, "rank": 1}
    collector.aggregator.feed(
        {**header, "m": [("l", 1.0, 0, {f"m{i}": 1.0 for i in range(25)})]}, 1.0
    )
    batch = collector.collect(2.0)
    assert len(batch.records["train_metrics"]["value"]) == 10
    [event] = [e for e in batch.events if e.kind == "train_dropped"]
    assert event.entity == "rank1" and event.detail["messages"] == 15
    health = collector.health()
    assert health["tracking.dropped_in_agent"] == 15
    watch = ProblemWatch()
    [told] = watch.new_problems(health)
    assert told.startswith("training client: losing training messages")
    assert watch.new_problems(collector.health()) == []  # said once per streak
    collector.collect(3.0)  # a tick without drops: the state is ok again, the count stays
    health = collector.health()
    assert health["tracking.state"] == "ok"
    assert [p.text for p in health_phrases(health)] == ["training client: 15 dropped in agent"]


def test_a_sender_outside_the_watched_tree_is_known_only_by_what_it_said(monkeypatch):
    from agent.tracking.collector import rank_identity

    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    header = {"rank": 3, "world_size": 4}
    outsider = subprocess.Popen(["sleep", "30"])  # a root we are not a descendant of
    try:
        foreign = rank_identity(os.getpid(), header, "h", root=outsider.pid)
    finally:
        outsider.kill()
        outsider.wait()
    assert foreign == {"pid": os.getpid(), "host": "h", "rank": 3, "world_size": 4}
    ours = rank_identity(os.getpid(), header, "h", root=os.getppid())  # our parent's tree
    assert ours["rank"] == 5 and ours["slurm_job_id"] == "99"
