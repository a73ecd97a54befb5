"""On the real procfs the process collector keeps each process's stat/status/io/children open
and reads them again at offset 0: the values of a path read, exits and reused pids still seen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import collectors.process as process_module
from agent.source import CollectContext
from collectors.process import ProcessCollector
from collectors.procfs import read

SLEEPERS = """
import os, signal, sys, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children that exit are reaped at once
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def tree():
    job = subprocess.Popen(
        [sys.executable, "-c", SLEEPERS, "3"], stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert job.stdout is not None and job.stdout.readline().strip() == "ready"
    yield job
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()


def _collector(root: int) -> ProcessCollector:
    collector = ProcessCollector(root)
    collector.start(CollectContext(root_pid=root))
    return collector


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _wait_stopped(root: int) -> None:
    """SIGSTOP takes effect a little later on a loaded machine: until each process of the
    group is stopped ('T'), its state and context switches still move between two reads."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        group = []
        for pid in pids:
            try:
                stat = read(f"/proc/{pid}/stat")
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if int(fields[2]) == root:  # its process group
                group.append(fields[0])
        if len(group) == 4 and all(state == b"T" for state in group):
            return
        time.sleep(0.01)
    raise AssertionError(f"the tree did not stop: {group}")


def _values(batch) -> dict:
    return dict(zip(zip(batch.entities, batch.metrics), batch.values))


def test_kept_files_read_what_a_path_read_reads(tree):
    """A stopped tree does not change between the reads: every value is the same."""
    os.killpg(tree.pid, signal.SIGSTOP)
    try:
        _wait_stopped(tree.pid)
        kept = _collector(tree.pid)
        kept.collect(time.time())
        assert kept.keep_files and kept._kept == 4
        assert all(t.files is not None for t in kept._tracked.values())
        opened = _collector(tree.pid)
        opened.keep_files = False
        now = time.time() + 1.0
        by_fd, by_path = _values(kept.collect(now)), _values(opened.collect(now))
        for values in (by_fd, by_path):  # utilization needs a previous tick: not compared
            for pid in kept.pids:
                values.pop((str(pid), "process.cpu.utilization"), None)
        assert by_fd == by_path
        for pid, known in kept._tracked.items():
            assert os.pread(known.files[0], 8192, 0) == read(f"/proc/{pid}/stat")
    finally:
        os.killpg(tree.pid, signal.SIGCONT)


def test_a_kept_process_that_exits_gets_its_exit_event_and_its_files_closed(tree):
    before = _open_fds()
    collector = _collector(tree.pid)
    collector.collect(time.time())
    assert _open_fds() == before + 4 * 4
    child = next(p for p in collector.pids if p != tree.pid)
    os.kill(child, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline:
        batch = collector.collect(time.time())
        if child not in collector.pids:
            break
        time.sleep(0.05)
    assert child not in collector.pids
    assert ("process_exit", str(child)) in [(e.kind, e.entity) for e in batch.events]
    assert _open_fds() == before + 3 * 4
    collector.close()
    assert _open_fds() == before


def test_a_kept_file_of_an_exited_process_is_never_read_as_the_pids_new_owner(tree):
    """A file open on a process fails once it exits, whoever gets its pid: read by path then."""
    collector = _collector(tree.pid)
    collector.collect(time.time())
    child = next(p for p in collector.pids if p != tree.pid)
    known = collector._tracked[child]
    os.kill(child, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and os.path.exists(f"/proc/{child}"):
        time.sleep(0.02)  # reaped by the tree's root... or a zombie until the root waits
        try:
            os.pread(known.files[0], 8192, 0)
        except ProcessLookupError:
            break
    with pytest.raises(ProcessLookupError):
        os.pread(known.files[0], 8192, 0)


def test_at_most_the_cap_of_processes_keep_files(tree, monkeypatch):
    monkeypatch.setattr(process_module, "MAX_KEPT_PROCESSES", 2)
    collector = _collector(tree.pid)
    collector.collect(time.time())
    batch = collector.collect(time.time() + 1)
    assert collector._kept == 2
    assert sum(t.files is not None for t in collector._tracked.values()) == 2
    assert {e for e, m in zip(batch.entities, batch.metrics) if m == "process.memory.rss"} == {
        str(p) for p in collector.pids
    }  # every process still sampled
    collector.close()


def test_an_injected_proc_root_is_read_by_path_each_tick(tmp_path):
    """Files written under a capture's root may be replaced: never kept open."""
    pid = os.getpid()
    (tmp_path / str(pid)).mkdir()
    (tmp_path / str(pid) / "stat").write_bytes(read(f"/proc/{pid}/stat"))
    (tmp_path / "stat").write_bytes(read("/proc/stat"))
    collector = ProcessCollector(pid, proc_root=str(tmp_path))
    collector.start(CollectContext(root_pid=pid, proc_root=str(tmp_path)))
    assert not collector.keep_files


GROWING = """
import os, signal, sys, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
def sleeper():
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
sleeper()
print("ready", flush=True)
sys.stdin.readline()
sleeper()
if os.fork() == 0:  # a grandchild, found through its parent's kept children file
    sleeper()
    time.sleep(60)
    os._exit(0)
print("grown", flush=True)
time.sleep(60)
"""


def test_a_kept_children_file_finds_the_children_forked_since_it_was_opened():
    job = subprocess.Popen(
        [sys.executable, "-c", GROWING], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert job.stdout is not None and job.stdout.readline().strip() == "ready"
        collector = _collector(job.pid)
        collector.collect(time.time())
        assert len(collector.pids) == 2
        assert collector._tracked[job.pid].files[3] is not None
        assert job.stdin is not None
        job.stdin.write("\n")
        job.stdin.flush()
        assert job.stdout.readline().strip() == "grown"
        time.sleep(0.2)  # the grandchild's own fork
        collector.collect(time.time())
        by_path = _collector(job.pid)
        by_path.keep_files = False
        by_path.collect(time.time())
        assert len(collector.pids) == 5
        assert collector.pids == by_path.pids
        collector.close()
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
