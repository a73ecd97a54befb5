"""The process-tree collector: procfs parsers, a real tree against psutil, a built /proc tree.

The built trees (``FakeProc``) are directories laid out like procfs, passed as ``proc_root``:
unrelated host processes, a multi-threaded parent whose child was forked by a second thread,
a kernel without ``task/TID/children`` files, a recycled pid, a zombie.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import collectors.process as process_module
from agent.source import CollectContext
from collectors.process import ProcessCollector
from collectors.procfs import (
    parse_children,
    parse_cmdline,
    parse_ctx_switches,
    parse_io,
    parse_memory,
    parse_stat,
    process_name,
    stat_comm,
)
from tests.helpers import wait_until

TICK = 100  # clock ticks per second the built trees use (os.sysconf("SC_CLK_TCK") on Linux)


# -- parsers ------------------------------------------------------------------------------------
def stat_line(pid: int, comm: str, state: str, ppid: int, utime: int, stime: int, threads: int,
              start: int) -> bytes:  # fmt: skip
    fields = [state, ppid, pid, pid, 0, -1, 4194304, 100, 0, 0, 0, utime, stime, 0, 0, 20, 0]
    fields += [threads, 0, start, 1 << 24, 300, 2**64 - 1] + [0] * 25
    return f"{pid} ({comm}) {' '.join(map(str, fields))}\n".encode()


def status_text(rss_kib: int | None, vms_kib: int | None, vol: int, invol: int) -> bytes:
    mem = "" if rss_kib is None else f"VmSize:\t{vms_kib:8d} kB\nVmRSS:\t{rss_kib:8d} kB\n"
    return (
        f"Name:\tx\nState:\tS (sleeping)\nTgid:\t1\n{mem}Threads:\t1\n"
        f"voluntary_ctxt_switches:\t{vol}\nnonvoluntary_ctxt_switches:\t{invol}\n"
    ).encode()


def test_stat_fields_are_counted_from_the_last_parenthesis():
    data = stat_line(42, "evil) S 1 (name", "R", 7, 250, 50, 3, 12345)
    assert parse_stat(data) == ("R", 7, 250, 50, 3, 12345)
    assert stat_comm(data) == "evil) S 1 (name"


def test_status_gives_exact_memory_and_context_switches():
    status = status_text(13696, 16564, 17, 8)
    assert parse_memory(status) == (13696 * 1024.0, 16564 * 1024.0)
    assert parse_ctx_switches(status) == (17, 8)


def test_status_of_a_zombie_has_no_memory():
    assert parse_memory(status_text(None, None, 1, 2)) == (0.0, 0.0)


def test_io_reads_bytes_that_reached_storage():
    io = b"rchar: 99\nwchar: 98\nsyscr: 1\nsyscw: 1\nread_bytes: 4096\nwrite_bytes: 8192\n"
    assert parse_io(io) == (4096, 8192)
    assert parse_io(b"rchar: 1\n") is None


def test_cmdline_splits_on_nul_and_keeps_a_rewritten_title_readable():
    assert parse_cmdline(b"python\0train.py\0--lr\0\0") == ["python", "train.py", "--lr", ""]
    assert parse_cmdline(b"python\0train.py\0") == ["python", "train.py"]
    assert parse_cmdline(b"pt_main_thread worker 3") == ["pt_main_thread", "worker", "3"]
    assert parse_cmdline(b"") == []


def test_children_and_a_truncated_name():
    assert parse_children(b"12 13 140 \n") == [12, 13, 140]
    assert parse_children(b"") == []
    assert process_name("a_very_long_nam", ["/usr/bin/a_very_long_name.py", "x"]) == (
        "a_very_long_name.py"
    )
    assert process_name("python", ["/usr/bin/python3"]) == "python"


# -- a built /proc ------------------------------------------------------------------------------
class FakeProc:
    """A procfs-shaped directory: ``add`` a process, ``children`` of a thread."""

    def __init__(self, root: Path, *, children_files: bool = True) -> None:
        self.root = root
        self.children_files = children_files
        (root / "stat").write_text("cpu  1 2 3 4\nbtime 1700000000\n")

    def add(self, pid: int, ppid: int, *, comm: str = "python", tids: tuple[int, ...] = (),
            utime: int = 100, start: int = 5000, state: str = "S", rss_kib: int | None = 2048,
            cmdline: bytes = b"python\0train.py\0", io: bool = True) -> None:  # fmt: skip
        d = self.root / str(pid)
        d.mkdir(exist_ok=True)
        threads = 1 + len(tids)
        (d / "stat").write_bytes(stat_line(pid, comm, state, ppid, utime, 7, threads, start))
        (d / "status").write_bytes(status_text(rss_kib, 4 * (rss_kib or 0), 11, 3))
        if io:
            (d / "io").write_bytes(b"read_bytes: 4096\nwrite_bytes: 512\n")
        else:
            (d / "io").unlink(missing_ok=True)
        (d / "cmdline").write_bytes(cmdline)
        for tid in (pid, *tids):
            (d / "task" / str(tid)).mkdir(parents=True, exist_ok=True)
            if self.children_files:
                (d / "task" / str(tid) / "children").write_text("")

    def children(self, pid: int, kids: list[int], tid: int | None = None) -> None:
        path = self.root / str(pid) / "task" / str(tid or pid) / "children"
        path.write_text(" ".join(map(str, kids)) + (" " if kids else ""))

    def remove(self, pid: int) -> None:
        import shutil

        shutil.rmtree(self.root / str(pid))


def start_collector(proc: FakeProc, root: int) -> ProcessCollector:
    collector = ProcessCollector(root)
    collector._tick = 1.0 / TICK
    collector.start(CollectContext(root_pid=root, proc_root=str(proc.root)))
    return collector


def values(batch) -> dict[tuple[str, str], float]:
    return dict(zip(zip(batch.entities, batch.metrics), batch.values))


@pytest.fixture
def tree(tmp_path) -> FakeProc:
    """Root 100 with a worker 101 (forked by the main thread) and a grandchild 102 forked by
    the worker's second thread 1011; 200 host processes around it that are none of ours."""
    proc = FakeProc(tmp_path)
    proc.add(100, 1, cmdline=b"python\0train.py\0")
    proc.add(101, 100, tids=(1011,), cmdline=b"python\0-c\0from multiprocessing.spawn\0")
    proc.add(102, 101, comm="sh", cmdline=b"sh\0-c\0true\0")
    proc.children(100, [101])
    proc.children(101, [102], tid=1011)
    for pid in range(2000, 2200):
        proc.add(pid, 1, comm="other")
    return proc


def test_the_tree_is_found_through_every_threads_children_file(tree):
    collector = start_collector(tree, 100)
    assert collector.children_files
    batch = collector.collect(1000.0)
    assert collector.pids == {100, 101, 102}
    v = values(batch)
    assert v["100", "process.cpu.user"] == 1.0
    assert v["100", "process.memory.rss"] == 2048 * 1024
    assert v["101", "process.threads"] == 2
    assert v["102", "process.io.read_bytes"] == 4096
    assert v["102", "process.ctx_switches.voluntary"] == 11
    assert v["102", "process.state"] == 2  # sleeping
    roles = {e: a["role"] for e, a in batch.entity_attrs.items()}
    assert roles == {"100": "main", "101": "worker", "102": "child"}
    assert batch.entity_attrs["102"]["cmdline"] == ["sh", "-c", "true"]
    assert batch.entity_attrs["100"]["create_time"] == 1700000000 + 5000 / TICK
    assert sorted(e.entity for e in batch.events if e.kind == "process_start") == [
        "100",
        "101",
        "102",
    ]


def test_discovery_reads_only_the_jobs_tree(tree, monkeypatch):
    """The host's 200 other processes are never read: the cost is the job's alone."""
    collector = start_collector(tree, 100)
    collector.collect(1000.0)
    paths: list[str] = []
    for name in ("read", "read_all"):
        real = getattr(process_module, name)

        def spy(path: str, real=real) -> bytes:
            paths.append(path)
            return real(path)

        monkeypatch.setattr(process_module, name, spy)
    collector.collect(1001.0)
    pids = {int(Path(p).relative_to(tree.root).parts[0]) for p in paths}
    assert pids == {100, 101, 102}
    assert not any(p.endswith("/cmdline") for p in paths)  # static: read once, on appearance


def test_without_children_files_the_tree_comes_from_every_parent(tmp_path):
    proc = FakeProc(tmp_path, children_files=False)
    proc.add(100, 1)
    proc.add(101, 100)
    proc.add(102, 101)
    proc.add(300, 1, comm="other")
    collector = start_collector(proc, 100)
    assert not collector.children_files
    collector.collect(1000.0)
    assert collector.pids == {100, 101, 102}


def test_cpu_utilization_is_the_cpu_time_over_the_interval(tree):
    collector = start_collector(tree, 100)
    first = values(collector.collect(1000.0))
    assert ("100", "process.cpu.utilization") not in first
    tree.add(100, 1, utime=250)  # +1.5 s of user time in 2 s
    second = values(collector.collect(1002.0))
    assert second["100", "process.cpu.utilization"] == pytest.approx(0.75)


def test_an_exited_process_gets_an_exit_event_and_a_vanished_child_is_skipped(tree):
    collector = start_collector(tree, 100)
    collector.collect(1000.0)
    tree.children(101, [102, 103], tid=1011)  # 103 listed, but gone before it is read
    tree.remove(102)
    batch = collector.collect(1001.0)
    assert collector.pids == {100, 101}
    assert [(e.kind, e.entity) for e in batch.events] == [("process_exit", "102")]


def test_a_recycled_pid_is_a_new_process(tree):
    collector = start_collector(tree, 100)
    collector.collect(1000.0)
    tree.add(102, 101, comm="bash", start=9000, cmdline=b"bash\0")
    batch = collector.collect(1001.0)
    kinds = [(e.kind, e.entity) for e in batch.events]
    assert kinds == [("process_exit", "102"), ("process_start", "102")]
    assert batch.entity_attrs["102"]["name"] == "bash"


def test_a_zombie_is_sampled_with_its_state(tree):
    tree.add(102, 101, comm="sh", state="Z", rss_kib=None, io=False)
    collector = start_collector(tree, 100)
    v = values(collector.collect(1000.0))
    assert v["102", "process.state"] == 4
    assert v["102", "process.memory.rss"] == 0
    assert ("102", "process.io.read_bytes") not in v


def test_the_root_gone_ends_the_tree(tree):
    collector = start_collector(tree, 100)
    collector.collect(1000.0)
    tree.remove(100)
    batch = collector.collect(1001.0)
    assert not collector.root_alive
    assert collector.pids == frozenset()
    assert {e.entity for e in batch.events if e.kind == "process_exit"} == {"100", "101", "102"}


def test_a_missing_target_is_a_target_error(tmp_path):
    from agent.errors import TargetError

    FakeProc(tmp_path)
    with pytest.raises(TargetError, match="no process with pid 4242"):
        ProcessCollector(4242).start(CollectContext(root_pid=4242, proc_root=str(tmp_path)))


# -- the real /proc -----------------------------------------------------------------------------
FORKING_JOB = textwrap.dedent(
    """
    import os, sys, threading, time
    def fork_sleeper():
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    fork_sleeper()
    t = threading.Thread(target=fork_sleeper)  # a child whose parent is a second thread
    t.start(); t.join()
    keep = threading.Thread(target=time.sleep, args=(60,), daemon=True)
    keep.start()
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_a_real_tree_reads_what_psutil_reads():
    job = subprocess.Popen(
        [sys.executable, "-c", FORKING_JOB], stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert job.stdout.readline().strip() == "ready"
        collector = ProcessCollector(job.pid)
        collector.start(CollectContext(root_pid=job.pid))
        root = psutil.Process(job.pid)
        expected = {job.pid, *(c.pid for c in root.children(recursive=True))}
        assert len(expected) == 3
        assert wait_until(lambda: collector.collect(time.time()) and collector.pids == expected)
        batch = collector.collect(time.time())
        v = values(batch)
        for pid in expected:
            proc = psutil.Process(pid)
            with proc.oneshot():
                mem, ctx, cpu = proc.memory_info(), proc.num_ctx_switches(), proc.cpu_times()
                threads = proc.num_threads()
            assert v[str(pid), "process.memory.rss"] == pytest.approx(mem.rss, rel=0.05)
            assert v[str(pid), "process.memory.vms"] == pytest.approx(mem.vms, rel=0.05)
            assert v[str(pid), "process.threads"] == threads
            assert v[str(pid), "process.cpu.user"] == pytest.approx(cpu.user, abs=0.05)
            assert v[str(pid), "process.ctx_switches.voluntary"] <= ctx.voluntary
        assert v[str(job.pid), "process.threads"] == 2
        described = ProcessCollector(job.pid)
        described.start(CollectContext(root_pid=job.pid))
        attrs = described.collect(time.time()).entity_attrs[str(job.pid)]
        assert attrs["cmdline"] == root.cmdline()
        assert attrs["name"] == root.name()
        assert attrs["create_time"] == pytest.approx(root.create_time(), abs=0.02)
    finally:
        import os
        import signal

        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
