"""The storage source over recorded procfs/sysfs trees replayed over (simulated) time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.catalog import CATALOG
from agent.registry import default_registry
from agent.source import CollectContext
from collectors.sim.fabric_storage.tree import SimMount, StorageTree
from collectors.storage.collector import StorageCollector
from collectors.storage.lustre import fsname_of, parse_llite_stats
from collectors.storage.mounts import MountTable, classify, parse_mountinfo
from collectors.storage.nfs import parse_mountstats

DATA = Path(__file__).parents[1] / "data" / "fabric-storage"
PID = 4242


def _values(batch) -> dict[tuple[str, str], float]:
    return {(e, m): v for e, m, v in zip(batch.entities, batch.metrics, batch.values)}


def test_nfs_v3_and_v4_mountstats_parse_as_the_kernel_wrote_them():
    stats = parse_mountstats((DATA / "mountstats.t0").read_text())
    assert set(stats) == {"/mnt/home", "/mnt/data"}  # ext4, lustre, proc sections skipped
    home, data = stats["/mnt/home"], stats["/mnt/data"]
    assert (home.fstype, data.fstype) == ("nfs", "nfs4")
    assert home.server == "10.1.0.5:/export/home" and data.statvers == "1.1"
    assert home.bytes[4] == 713031680  # server read bytes
    assert home.ops["READ"] == (680, 683, 0, 89760, 713118720, 21, 10880, 11015, 0)
    assert data.ops["LOOKUP"][8] == 612  # errors (statvers 1.1)
    assert "SETCLIENTID_CONFIRM" in data.ops and "READDIRPLUS" in home.ops


def test_lustre_llite_stats_parse():
    stats = parse_llite_stats((DATA / "llite-stats.t0").read_text())
    assert stats["read_bytes"] == (4096, 8589934592)
    assert stats["write"] == (512, 4194304)
    assert stats["ioctl"] == (12, None)
    assert "snapshot_time" not in stats
    assert fsname_of("10.2.0.1@o2ib:10.2.0.2@o2ib:/scratch") == "scratch"


def _job_tree(tmp_path: Path) -> StorageTree:
    tree = StorageTree(tmp_path / "proc", tmp_path / "sys", pid=PID)
    home = tree.nfs("/mnt/home", version=3, server="10.1.0.5:/export/home")
    data = tree.nfs("/mnt/data", version=4, server="10.1.0.6:/datasets")
    scratch = tree.lustre("/lustre/scratch")
    local = tree.local("/local", block="nvme1n1")
    home.files = ("/mnt/home/user/train.py",)
    data.files = ("/mnt/data/shard-00001.tar", "/mnt/data/shard-00002.tar")
    scratch.files = ("/lustre/scratch/ckpt/step-100.pt",)
    local.files = ("/local/cache/x.bin",)
    tree.cwd = "/mnt/home/user"
    tree.write()
    return tree


def _collector(tmp_path: Path, **ctx) -> StorageCollector:
    collector = StorageCollector(rescan_s=0)
    collector.start(
        CollectContext(
            root_pid=PID,
            job_pids=lambda: frozenset({PID}),
            proc_root=str(tmp_path / "proc"),
            sys_root=str(tmp_path / "sys"),
            **ctx,
        )
    )
    return collector


def _lustre_stats(tmp_path: Path) -> Path:
    return next((tmp_path / "proc" / "fs" / "lustre" / "llite").glob("scratch-*")) / "stats"


def _replay(tmp_path: Path):
    tree = _job_tree(tmp_path)
    mountstats = tmp_path / "proc" / str(PID) / "mountstats"
    shutil.copy(DATA / "mountstats.t0", mountstats)
    shutil.copy(DATA / "llite-stats.t0", _lustre_stats(tmp_path))
    collector = _collector(tmp_path)
    first = collector.collect(1000.0)
    shutil.copy(DATA / "mountstats.t1", mountstats)
    shutil.copy(DATA / "llite-stats.t1", _lustre_stats(tmp_path))
    second = collector.collect(1010.0)
    return tree, collector, first, second


def _rate(v0, v1, entity, metric, dt=10.0):
    return (v1[(entity, metric)] - v0[(entity, metric)]) / dt


def test_replayed_nfs_mounts_give_known_rates_latency_and_retransmissions(tmp_path):
    _, _, b0, b1 = _replay(tmp_path)
    v0, v1 = _values(b0), _values(b1)
    data, home = "mount:/mnt/data", "mount:/mnt/home"
    assert _rate(v0, v1, data, "fs.read_bytes") == pytest.approx(209715200, rel=0.01)
    assert _rate(v0, v1, data, "fs.read_ops") == pytest.approx(200, rel=0.01)
    assert v1[(data, "fs.rtt")] == pytest.approx(3100 / 2500 / 1000, rel=0.01)
    assert v1[(data, "fs.latency")] == pytest.approx(4120 / 2500 / 1000, rel=0.01)
    assert v1[("nfsop:READ@/mnt/data", "fs.op.rtt")] == pytest.approx(0.0015, rel=0.01)
    assert v1[("nfsop:READ@/mnt/data", "fs.op.latency")] == pytest.approx(0.002, rel=0.01)
    assert v1[(data, "fs.retransmits")] - v0[(data, "fs.retransmits")] == 2
    assert _rate(v0, v1, home, "fs.read_bytes") == pytest.approx(10485760, rel=0.01)
    assert _rate(v0, v1, home, "fs.write_bytes") == pytest.approx(1048576, rel=0.01)
    assert v1[(home, "fs.rtt")] == pytest.approx(0.005, rel=0.01)
    assert v1[(home, "fs.latency")] == pytest.approx(0.006, rel=0.01)
    assert (data, "fs.rtt") not in v0  # an average needs an interval


def test_replayed_lustre_mount_gives_its_checkpoint_write_rate_and_latency(tmp_path):
    _, _, b0, b1 = _replay(tmp_path)
    v0, v1 = _values(b0), _values(b1)
    m = "mount:/lustre/scratch"
    assert _rate(v0, v1, m, "fs.write_bytes") == pytest.approx(4294967296 / 10, rel=0.01)
    assert _rate(v0, v1, m, "fs.write_ops") == pytest.approx(102.4, rel=0.01)
    assert v1[(m, "fs.latency")] == pytest.approx(0.002, rel=0.01)
    assert _rate(v0, v1, m, "fs.read_bytes") == 0


def test_mounts_are_described_with_type_kind_and_their_users(tmp_path):
    _, _, b0, _ = _replay(tmp_path)
    attrs = b0.entity_attrs
    assert set(attrs) == {"mount:/mnt/home", "mount:/mnt/data", "mount:/lustre/scratch",
                          "mount:/local"}  # fmt: skip
    assert attrs["mount:/mnt/data"]["fstype"] == "nfs4"
    assert attrs["mount:/mnt/data"]["kind"] == "nfs"
    assert attrs["mount:/lustre/scratch"]["kind"] == "lustre"
    assert attrs["mount:/local"]["block_device"] == "nvme1n1"
    assert attrs["mount:/mnt/home"]["pids"] == [PID]
    registry = default_registry()
    assert registry.kind_of("storage", "mount:/mnt/data") == "mount"
    assert registry.kind_of("storage", "nfsop:READ@/mnt/data") == "mount.op"
    assert {CATALOG[m].source for m in b0.metrics} == {"storage"}


def test_an_nfs_remount_resetting_its_counters_gives_no_negative_figures(tmp_path):
    tree = _job_tree(tmp_path)
    mountstats = tmp_path / "proc" / str(PID) / "mountstats"
    shutil.copy(DATA / "mountstats.t1", mountstats)
    collector = _collector(tmp_path)
    v0 = _values(collector.collect(0.0))
    shutil.copy(DATA / "mountstats.t0", mountstats)  # every counter went back
    v1 = _values(collector.collect(10.0))
    for (entity, metric), value in v1.items():
        if CATALOG[metric].is_counter and (entity, metric) in v0:
            assert value >= v0[(entity, metric)], (entity, metric)
    assert v1[("mount:/mnt/data", "fs.rtt")] >= 0
    del tree


def test_unreadable_lustre_stats_give_one_notice_and_the_mount_stays(tmp_path):
    _job_tree(tmp_path)
    shutil.rmtree(tmp_path / "proc" / "fs")
    collector = _collector(tmp_path)
    batches = [collector.collect(float(t)) for t in range(4)]
    notices = [e for b in batches for e in b.events if e.kind == "notice"]
    assert len(notices) == 1
    assert notices[0].entity == "mount:/lustre/scratch"
    assert "debugfs" in notices[0].detail["message"]
    assert "/lustre/scratch" in collector.mounts


def test_the_block_device_behind_a_local_mount_gives_throughput_iops_queue_and_busy(tmp_path):
    tree = _job_tree(tmp_path)
    collector = _collector(tmp_path)
    collector.collect(0.0)
    local = next(m for m in tree.mounts if m.point == "/local")
    # 10 s: 2000 reads of 1 MiB (4 096 000 sectors... 2048 per MiB), 5 s busy, 40 s queued
    local.stat[0] += 2000
    local.stat[2] += 2000 * 2048
    local.stat[3] += 4000
    local.stat[9] += 5000
    local.stat[10] += 40000
    tree.write()
    v = _values(collector.collect(10.0))
    m = "mount:/local"
    assert v[(m, "fs.read_bytes")] == 2000 * 1048576
    assert v[(m, "fs.read_ops")] == 2000
    assert v[(m, "fs.busy")] == pytest.approx(0.5)
    assert v[(m, "fs.queue_depth")] == pytest.approx(4.0)
    assert v[(m, "fs.latency")] == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("fstype", "source", "kind"),
    [
        ("nfs4", "srv:/x", "nfs"),
        ("lustre", "mgs@o2ib:/fs", "lustre"),
        ("gpfs", "fs1", "gpfs"),
        ("fuse.s3fs", "s3fs", "object-store"),
        ("fuse.gcsfuse", "bucket", "object-store"),
        ("fuse", "mountpoint-s3", "object-store"),
        ("fuse.sshfs", "host:", "fuse"),
        ("xfs", "/dev/nvme0n1", "local"),
        ("tmpfs", "tmpfs", "memory"),
        ("devpts", "devpts", "pseudo"),
    ],
)
def test_mount_types_are_classified(fstype, source, kind):
    assert classify(fstype, source) == kind


def test_mountinfo_paths_are_unescaped_and_the_longest_mount_wins():
    text = (
        "20 1 259:2 / / rw - ext4 /dev/nvme0n1p2 rw\n"
        "30 20 0:50 / /mnt/my\\040data rw shared:7 master:3 - nfs4 srv:/d rw\n"
        "31 20 0:51 / /mnt rw - tmpfs tmpfs rw\n"
    )
    table = MountTable(parse_mountinfo(text))
    assert table.find("/mnt/my data/a.bin").fstype == "nfs4"
    assert table.find("/mnt/other").fstype == "tmpfs"
    assert table.find("/usr/lib/x.so").mountpoint == "/"


def test_a_captured_trees_processes_stand_in_for_the_job(tmp_path):
    _job_tree(tmp_path)
    collector = StorageCollector(rescan_s=0)
    collector.start(
        CollectContext(
            root_pid=99999999,  # the replaying agent's own job: not in the captured tree
            job_pids=lambda: frozenset({99999999}),
            proc_root=str(tmp_path / "proc"),
            sys_root=str(tmp_path / "sys"),
        )
    )
    assert collector.pids() == [PID]
    assert "mount:/mnt/data" in collector.collect(1.0).entity_attrs


def test_job_io_is_tied_to_the_one_mount_holding_its_open_files(tmp_path):
    tree = StorageTree(tmp_path / "proc", tmp_path / "sys", pid=PID)
    data = tree.nfs("/mnt/data")
    data.files = ("/mnt/data/a", "/mnt/data/b")
    tree.write()
    collector = _collector(tmp_path)
    collector.collect(0.0)
    tree.rchar, tree.wchar = 5_000_000, 1_000
    tree.write()
    v = _values(collector.collect(1.0))
    assert v[("mount:/mnt/data", "fs.job.read_bytes")] == 5_000_000
    assert v[("mount:/mnt/data", "fs.job.write_bytes")] == 1_000


def test_a_process_holding_a_pipe_or_socket_has_its_io_tied_to_no_mount(tmp_path):
    """``rchar``/``wchar`` count a pipe's and a socket's bytes too (a DataLoader's worker
    queues, a rank's sockets): with one open beyond stdio, the process's I/O is not a mount's."""
    for stream in ("pipe:[4242]", "socket:[4243]"):
        root = tmp_path / stream[:4]
        tree = StorageTree(root / "proc", root / "sys", pid=PID)
        data = tree.nfs("/mnt/data")
        data.files = ("/mnt/data/a",)
        tree.write()
        os.symlink(stream, root / "proc" / str(PID) / "fd" / "30")
        os.symlink("pipe:[1]", root / "proc" / str(PID) / "fd" / "1")  # stdout: says nothing
        collector = _collector(root)
        collector.collect(0.0)
        tree.rchar, tree.wchar = 5_000_000, 1_000
        tree.write()
        v = _values(collector.collect(1.0))
        assert "/mnt/data" in collector.mounts  # the mount is the job's all the same
        assert ("mount:/mnt/data", "fs.job.read_bytes") not in v, stream
        assert collector._sole_mount == {}


DEVICE = ("fs.job.device_read_bytes", "fs.job.device_write_bytes")
CHARS = ("fs.job.read_bytes", "fs.job.write_bytes")


def _one_mount_tree(root: Path, kind: str, *, stream: str | None = None) -> StorageTree:
    """A process with two files on one mount (``local``: xfs on nvme0n1, or ``nfs``), and a
    pipe or socket beyond stdio if ``stream``."""
    tree = StorageTree(root / "proc", root / "sys", pid=PID)
    m = tree.local("/data", block="nvme0n1") if kind == "local" else tree.nfs("/data")
    m.files = ("/data/a", "/data/b")
    tree.write()
    if stream is not None:
        os.symlink(stream, root / "proc" / str(PID) / "fd" / "30")
    return tree


def _moved(tree: StorageTree, collector: StorageCollector, t: float, r: int, w: int) -> dict:
    """One tick after the process read ``r`` and wrote ``w`` bytes, all of it on the device."""
    tree.rchar, tree.wchar = tree.rchar + r, tree.wchar + w
    tree.read_bytes, tree.write_bytes = tree.read_bytes + r, tree.write_bytes + w
    tree.write()
    v = _values(collector.collect(t))
    return {metric: v.get(("mount:/data", metric)) for metric in (*CHARS, *DEVICE)}


def test_a_process_holding_a_pipe_on_a_local_mount_gets_device_bytes_but_no_char_bytes(tmp_path):
    """``read_bytes``/``write_bytes`` count block I/O only: a DataLoader's pipes and a rank's
    sockets are not in them, so they are the mount's while ``rchar``/``wchar`` are not."""
    for stream in ("pipe:[77]", "socket:[78]"):
        root = tmp_path / stream[:4]
        tree = _one_mount_tree(root, "local", stream=stream)
        collector = _collector(root)
        assert _moved(tree, collector, 0.0, 0, 0) == dict.fromkeys(CHARS) | dict.fromkeys(DEVICE, 0)
        got = _moved(tree, collector, 1.0, 3_000_000, 2_000)
        assert got == {**dict.fromkeys(CHARS), DEVICE[0]: 3_000_000, DEVICE[1]: 2_000}, stream
        assert collector._sole_mount == {PID: ("/data", False, True)}


def test_a_process_without_streams_on_a_local_mount_gets_both_figures(tmp_path):
    tree = _one_mount_tree(tmp_path, "local")
    collector = _collector(tmp_path)
    _moved(tree, collector, 0.0, 0, 0)
    tree.rchar += 500  # a page-cache hit: read, but not from the device
    got = _moved(tree, collector, 1.0, 4_000_000, 8_192)
    assert got == dict(zip((*CHARS, *DEVICE), (4_000_500, 8_192, 4_000_000, 8_192)))


def test_a_memfd_is_no_second_mount(tmp_path):
    """A memfd (``/memfd:name (deleted)``: CUDA's IPC, shared tensors) reads like a path on
    ``/``; it is on no mount, so the process's figures stay the one local mount's."""
    tree = _one_mount_tree(tmp_path, "local")
    tree.local("/", block="vda")  # the link would be a file on it
    tree.write()
    os.symlink("/memfd:torch-shm (deleted)", tmp_path / "proc" / str(PID) / "fd" / "31")
    os.symlink("/dmabuf:", tmp_path / "proc" / str(PID) / "fd" / "32")
    collector = _collector(tmp_path)
    _moved(tree, collector, 0.0, 0, 0)
    got = _moved(tree, collector, 1.0, 1_000_000, 4_096)
    assert got == dict(zip((*CHARS, *DEVICE), (1_000_000, 4_096, 1_000_000, 4_096)))
    assert collector._sole_mount == {PID: ("/data", True, True)}


def test_a_process_on_an_nfs_mount_gets_no_device_bytes(tmp_path):
    """NFS counts ``read_bytes`` for pages it asks the server for, not at a block device: only
    a local filesystem on a known block device gets ``fs.job.device_*``."""
    for stream in (None, "pipe:[77]"):
        root = tmp_path / str(stream is None)
        tree = _one_mount_tree(root, "nfs", stream=stream)
        collector = _collector(root)
        _moved(tree, collector, 0.0, 0, 0)
        got = _moved(tree, collector, 1.0, 3_000_000, 2_000)
        assert got[DEVICE[0]] is None and got[DEVICE[1]] is None
        assert (got[CHARS[0]] is None) == (stream is not None)


def test_files_in_memory_do_not_keep_device_bytes_from_the_one_local_mount(tmp_path):
    """A tmpfs file (``/dev/shm``, as DataLoader workers share tensors) does no block I/O: the
    process's device bytes are still the local mount's, its char bytes no mount's."""
    tree = _one_mount_tree(tmp_path, "local")
    shm = tree.add(SimMount("/dev/shm", "tmpfs", "tmpfs", "0:70"))
    shm.files = ("/dev/shm/torch_1",)
    tree.write()
    collector = _collector(tmp_path)
    _moved(tree, collector, 0.0, 0, 0)
    got = _moved(tree, collector, 1.0, 1_000, 1_000)
    assert got == {**dict.fromkeys(CHARS), DEVICE[0]: 1_000, DEVICE[1]: 1_000}


def test_device_bytes_survive_a_counter_reset_and_count_nothing_moved_while_untied(tmp_path):
    """A counter that goes back (the pid reused by a new process) counts on from its new value;
    bytes moved while the process held files on a second mount are no mount's."""
    tree = _one_mount_tree(tmp_path, "local")
    collector = _collector(tmp_path)
    _moved(tree, collector, 0.0, 0, 0)
    _moved(tree, collector, 1.0, 10_000, 10_000)
    tree.read_bytes, tree.write_bytes = 0, 0  # a new process under the same pid
    assert _moved(tree, collector, 2.0, 300, 200)[DEVICE[0]] == 10_300
    other = tree.local("/other", block="nvme1n1")
    other.files = ("/other/c",)  # a file on a second mount: tied to neither
    tree.write()
    collector.collect(3.0)
    assert collector._sole_mount == {}
    _moved(tree, collector, 4.0, 50_000, 50_000)
    other.files = ()
    tree.write()
    os.unlink(tmp_path / "proc" / str(PID) / "fd" / "12")
    collector.collect(5.0)  # tied again: the next reading starts afresh
    got = _moved(tree, collector, 6.0, 1, 2)
    assert (got[DEVICE[0]], got[DEVICE[1]]) == (10_301, 10_202)
    assert (got[CHARS[0]], got[CHARS[1]]) == (10_301, 10_202)


def test_files_opened_on_another_mount_are_mapped_at_the_next_rescan(tmp_path):
    """The fd → mount mapping is redone only when the job's open files changed: a change
    (the same fd number, a file on another mount) must still be seen."""
    tree = StorageTree(tmp_path / "proc", tmp_path / "sys", pid=PID)
    data = tree.nfs("/mnt/data")
    scratch = tree.local("/scratch", block="nvme0n1")
    data.files = ("/mnt/data/a",)
    tree.write()
    collector = StorageCollector(str(tmp_path / "proc"), str(tmp_path / "sys"), rescan_s=5)
    collector.start(CollectContext(root_pid=PID, job_pids=lambda: frozenset({PID})))
    collector.collect(0.0)
    collector.collect(5.0)  # rescan, nothing changed
    assert set(collector.mounts) == {"/mnt/data"}
    data.files, scratch.files = (), ("/scratch/shard-0",)  # fd 10 now on /scratch
    tree.write()
    collector.collect(6.0)  # before the rescan: not yet
    assert "/scratch" not in collector.mounts
    batch = collector.collect(10.0)
    assert "/scratch" in collector.mounts
    assert batch.entity_attrs["mount:/scratch"]["pids"] == [PID]
    assert collector._sole_mount == {PID: ("/scratch", True, True)}  # its io counts there now


def test_nfs_sections_found_in_place_by_their_device_line_match_a_line_by_line_cut():
    from collectors.storage.nfs import find_heads, locate

    for name in ("mountstats.t0", "mountstats.t1"):
        text = (DATA / name).read_bytes()
        heads = find_heads(text)
        assert set(heads) == {"/mnt/home", "/mnt/data"}
        for point, (head, dev) in heads.items():
            lines = text.split(b"\n")
            first = max(i for i, line in enumerate(lines) if line == head[:-1])
            section = []
            for line in lines[first + 1 :]:
                if line.startswith(b"device "):
                    break
                section.append(line)
            numbers = next(line for line in section if line.strip().startswith(b"bytes:"))
            ops = [line for line in section[section.index(b"\tper-op statistics") + 1 :]
                   if line.strip()]  # fmt: skip
            found = locate(text, head)
            assert found is not None and dev.mountpoint == point
            assert found[0] == numbers.strip()[6:].strip()
            assert [line for line in found[1].split(b"\n") if line.strip()] == ops
    gone = b"device x:/y mounted on /gone with fstype nfs\n"
    assert locate(text, gone) is None
    assert locate(text, head[1:]) is None  # not at the start of a line


def test_an_nfs_section_whose_device_line_changed_is_found_again_at_once_and_a_gone_one_at_rescans(
    tmp_path,
):
    tree = StorageTree(tmp_path / "proc", tmp_path / "sys", pid=PID)
    data = tree.nfs("/mnt/data")
    data.files = ("/mnt/data/a",)
    tree.write()
    collector = StorageCollector(str(tmp_path / "proc"), str(tmp_path / "sys"), rescan_s=5)
    collector.start(CollectContext(root_pid=PID, job_pids=lambda: frozenset({PID})))
    collector.collect(0.0)
    data.ops["READ"][0] += 10
    data.source = "10.9.9.9:/export"  # remounted from another server: a new device line
    tree.write()
    v = _values(collector.collect(1.0))  # not a rescan tick: found again at once
    assert v[("mount:/mnt/data", "fs.read_ops")] == 10
    tree.mounts.remove(data)  # unmounted: its section is gone
    tree.write()
    assert ("mount:/mnt/data", "fs.read_ops") not in _values(collector.collect(2.0))
    tree.mounts.append(data)
    data.ops["READ"][0] += 5
    tree.write()
    assert ("mount:/mnt/data", "fs.read_ops") not in _values(collector.collect(3.0))  # until
    v = _values(collector.collect(5.0))  # the rescan looks for it again
    assert v[("mount:/mnt/data", "fs.read_ops")] == 15
