"""End to end: a real child process reads and writes on a filesystem of the test's own.

Where the machine allows it the child runs in its own user and mount namespace with a fresh
tmpfs mounted (``unshare -rm``); elsewhere it uses the temporary directory's filesystem. Either
way the storage source reads the real ``/proc`` and must tie the child's I/O to that mount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.source import CollectContext
from collectors.storage.collector import StorageCollector
from collectors.storage.mounts import MountTable, parse_mountinfo

CHILD = r"""
import os, sys
path = sys.argv[1]
f = open(os.path.join(path, "data.bin"), "w+b")
print("ready", flush=True)
for line in sys.stdin:
    op, n = line.split()
    n = int(n)
    if op == "write":
        for _ in range(n // 65536):
            f.write(b"x" * 65536)
        f.flush()
        os.fsync(f.fileno())
    else:
        f.seek(0)
        got = 0
        while got < n:
            chunk = f.read(min(65536, n - got))
            if not chunk:
                break
            got += len(chunk)
    print("done", flush=True)
"""

MIB = 1 << 20


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs none {probe}"],
        capture_output=True,
        timeout=10,
    )
    return done.returncode == 0


def _start_child(tmp_path: Path, where: str) -> tuple[subprocess.Popen, str, str]:
    target = tmp_path / "fs"
    target.mkdir()
    argv = [sys.executable, "-c", CHILD, str(target)]
    if where == "tmpfs":
        if not _can_mount_tmpfs(tmp_path):
            pytest.skip("this machine does not let a user namespace mount a tmpfs")
        script = f'mount -t tmpfs -o size=64m none "{target}" && exec "$0" "$@"'
        argv = ["unshare", "-rm", "sh", "-c", script, *argv]
        expected_kind = "memory"
    else:
        expected_kind = ""
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child, str(target), expected_kind


def _ask(child: subprocess.Popen, op: str, n: int) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(f"{op} {n}\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "done"


def _values(batch) -> dict[tuple[str, str], float]:
    return {(e, m): v for e, m, v in zip(batch.entities, batch.metrics, batch.values)}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs a Linux /proc")
@pytest.mark.parametrize("where", ["tmpfs", "tempdir"])
def test_a_real_child_process_io_is_tied_to_its_mount_within_tolerance(tmp_path, where):
    child, target, expected_kind = _start_child(tmp_path, where)
    try:
        collector = StorageCollector(rescan_s=0)
        collector.start(CollectContext(root_pid=child.pid, job_pids=lambda: frozenset({child.pid})))
        first = collector.collect(time.time())
        if expected_kind:
            entity = f"mount:{target}"
        else:  # the temp dir's own filesystem holds the file
            table = MountTable(parse_mountinfo(Path("/proc/self/mountinfo").read_text()))
            found = table.find(target)
            assert found is not None
            entity = f"mount:{found.mountpoint}"
        attrs = first.entity_attrs[entity]
        if expected_kind:
            assert (attrs["fstype"], attrs["kind"]) == ("tmpfs", expected_kind)
        assert attrs["pids"] == [child.pid]
        v0 = _values(first)
        _ask(child, "write", 16 * MIB)
        v1 = _values(collector.collect(time.time()))
        _ask(child, "read", 8 * MIB)
        v2 = _values(collector.collect(time.time()))
    finally:
        child.kill()
        child.wait()
    wrote = v1[(entity, "fs.job.write_bytes")] - v0[(entity, "fs.job.write_bytes")]
    read = v2[(entity, "fs.job.read_bytes")] - v1[(entity, "fs.job.read_bytes")]
    assert wrote == pytest.approx(16 * MIB, rel=0.01)
    assert read == pytest.approx(8 * MIB, rel=0.01)
