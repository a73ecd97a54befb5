"""End to end: a real child process holding a pipe moves bytes to and from a real disk.

Its ``rchar``/``wchar`` hold the pipe's bytes too, so no mount may claim them; its
``read_bytes``/``write_bytes`` count only what reached the block device, so the temporary
directory's filesystem (ext4 on a disk here) must claim those: what it wrote, and what it read
back once its pages were dropped from the page cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.source import CollectContext
from collectors.storage.collector import StorageCollector
from collectors.storage.mounts import MountTable, parse_mountinfo
from tests.collectors.test_storage_e2e import _ask, _values

MIB = 1 << 20
SIZE = 16 * MIB

CHILD = r"""
import os, sys
r, w = os.pipe()  # kept open, as a DataLoader worker keeps its queues
fd = os.open(os.path.join(sys.argv[1], "data.bin"), os.O_RDWR | os.O_CREAT, 0o600)
print("ready", flush=True)
for line in sys.stdin:
    op, n = line.split()
    n = int(n)
    if op == "write":
        chunk = b"x" * (1 << 20)
        for i in range(n >> 20):
            os.pwrite(fd, chunk, i << 20)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean now: dropped
    else:
        got = 0
        while got < n:
            data = os.pread(fd, 1 << 20, got)
            if not data:
                break
            got += len(data)
    print("done", flush=True)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs a Linux /proc")
def test_a_real_child_holding_a_pipe_has_its_disk_bytes_tied_to_the_mount_and_no_char_bytes(
    tmp_path: Path,
):
    table = MountTable(parse_mountinfo(Path("/proc/self/mountinfo").read_text()))
    mount = table.find(str(tmp_path))
    assert mount is not None
    argv = [sys.executable, "-c", CHILD, str(tmp_path)]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        try:
            Path(f"/proc/{child.pid}/io").read_bytes()
        except OSError as e:
            pytest.skip(f"/proc/<pid>/io of a child is not readable here ({e})")
        collector = StorageCollector(rescan_s=0)
        collector.start(CollectContext(root_pid=child.pid, job_pids=lambda: frozenset({child.pid})))
        v0 = _values(collector.collect(time.time()))
        used = collector.mounts.get(mount.mountpoint)
        assert used is not None
        if not used.block_backed:
            pytest.skip(
                f"the temporary directory is on {mount.fstype} ({mount.source}), not a local "
                "filesystem on a block device: its bytes are not a device's"
            )
        _ask(child, "write", SIZE)
        v1 = _values(collector.collect(time.time()))
        _ask(child, "read", SIZE)
        v2 = _values(collector.collect(time.time()))
    finally:
        child.kill()
        child.wait()
    entity = used.entity
    read, write = (f"fs.job.device_{d}_bytes" for d in ("read", "write"))
    wrote = v1[(entity, write)] - v0[(entity, write)]
    read_back = v2[(entity, read)] - v1[(entity, read)]
    assert SIZE <= wrote <= 2 * SIZE  # the pages it dirtied (the journal is jbd2's, not its)
    assert SIZE * 0.9 <= read_back <= SIZE + MIB  # from the disk: the page cache was dropped
    assert v1[(entity, read)] - v0[(entity, read)] < MIB  # writing read (almost) nothing
    for v in (v0, v1, v2):  # the pipe's bytes would be in rchar/wchar: no mount's
        assert (entity, "fs.job.read_bytes") not in v and (entity, "fs.job.write_bytes") not in v
