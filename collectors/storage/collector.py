"""The storage collector: the job's mounts and, per type, what the kernel keeps about them.

Every ``rescan_s`` (and at the first tick) the job's open files and working directories are
mapped onto the mounts of its ``mountinfo``; a mount once used stays reported for the run.
Each tick then reads each needed file once: ``mountstats`` (one read for every NFS mount),
each Lustre ``stats`` file, each backing device's ``stat``, and ``io`` of the processes whose
open files (beyond stdin, stdout and stderr) all sit on one mount: their bytes are the mount's
``fs.job.*``. A process with files on several mounts is not split between them.

Replaying a captured tree (``--proc-root`` not ``/proc``): when none of the job's pids exist
under the root, the processes captured there stand in for the job.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from agent.catalog.storage import ENTITY_PREFIX, SOURCE
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector
from collectors.fabric.counters import Cumulative
from collectors.fabric.ports import read_bytes
from collectors.storage.block import BlockTracker, block_devices, parse_block_stat
from collectors.storage.lustre import LustreTracker, find_stats, fsname_of, parse_llite_stats
from collectors.storage.mounts import Mount, MountTable, cwd_of, open_paths, parse_mountinfo
from collectors.storage.nfs import NfsTracker, split_mountstats

log = logging.getLogger(__name__)

DEFAULT_RESCAN_S = 5.0
#: Set by the storage simulator (collectors/sim/fabric_storage) to its fake trees.
ENV_PROC_ROOT = "ACCELWATCH_STORAGE_PROC_ROOT"
ENV_SYS_ROOT = "ACCELWATCH_STORAGE_SYS_ROOT"
#: Mount kinds whose files are in memory or are kernel interfaces: never the job's storage.
_IGNORED_KINDS = ("pseudo",)
_MAX_MOUNTS = 64


@dataclass
class UsedMount:
    mount: Mount
    entity: str
    nfs: NfsTracker | None = None
    lustre: LustreTracker | None = None
    lustre_stats: str | None = None
    block: BlockTracker | None = None
    block_stat: str | None = None
    block_name: str | None = None
    pids: set[int] = field(default_factory=set)
    job_read: int = 0
    job_write: int = 0
    attributed: bool = False
    described: dict | None = None


class StorageCollector(Collector):
    """Per-mount throughput, operations and latency of the filesystems the job touches."""

    source = SOURCE

    def __init__(
        self,
        proc_root: str | None = None,
        sys_root: str | None = None,
        rescan_s: float | None = None,
    ) -> None:
        self._explicit = (proc_root, sys_root)
        self.proc_root = proc_root or "/proc"
        self.sys_root = sys_root or "/sys"
        self.rescan_s = DEFAULT_RESCAN_S if rescan_s is None else rescan_s
        self.ctx = CollectContext()
        self.mounts: dict[str, UsedMount] = {}
        self._last_scan: float | None = None
        self._sole_mount: dict[int, str] = {}  # pid → the one mount holding its open files
        self._io: dict[tuple[int, int], Cumulative] = {}
        self._blocks: dict[str, tuple[str, str]] | None = None
        self._real_proc = True

    def start(self, ctx: CollectContext) -> None:
        self.ctx = ctx
        # explicit roots (tests), else --proc-root/--sys-root, else a scenario's simulated tree
        proc = ctx.proc_root if ctx.proc_root != "/proc" else None
        sys_ = ctx.sys_root if ctx.sys_root != "/sys" else None
        self.proc_root = self._explicit[0] or proc or os.environ.get(ENV_PROC_ROOT) or "/proc"
        self.sys_root = self._explicit[1] or sys_ or os.environ.get(ENV_SYS_ROOT) or "/sys"
        self._real_proc = os.path.realpath(self.proc_root) == "/proc"
        option = ctx.options.get(SOURCE, {}).get("rescan_s")
        if option is not None:
            self.rescan_s = float(option)

    # -- which processes and mounts
    def pids(self) -> list[int]:
        pids = sorted(self.ctx.job_pids())
        if self.ctx.root_pid is not None and self.ctx.root_pid not in pids:
            pids.insert(0, self.ctx.root_pid)
        if self._real_proc:  # the live machine: the job's pids as the tree knows them
            return pids
        live = [p for p in pids if os.path.isdir(os.path.join(self.proc_root, str(p)))]
        if live:
            return live
        try:  # a captured tree: its processes stand in for the job
            return sorted(int(n) for n in os.listdir(self.proc_root) if n.isdigit())
        except OSError:
            return []

    def _scan(self, b: BatchBuilder, pids: list[int]) -> None:
        info = None
        for pid in pids:
            info = read_bytes_all(os.path.join(self.proc_root, str(pid), "mountinfo"))
            if info is not None:
                break
        if info is None:
            return
        table = MountTable(parse_mountinfo(info))
        self._sole_mount.clear()
        for used in self.mounts.values():
            used.pids.clear()
        for pid in pids:
            held: set[str] = set()
            for fd, path in open_paths(self.proc_root, pid):
                m = table.find(path)
                if m is not None and m.kind not in _IGNORED_KINDS:
                    if fd > 2:  # stdio (a log file, a terminal) says nothing of its data I/O
                        held.add(m.mountpoint)
                    self._use(b, m).pids.add(pid)
            cwd = cwd_of(self.proc_root, pid)
            m = None if cwd is None else table.find(cwd)
            if m is not None and m.kind not in _IGNORED_KINDS:
                self._use(b, m).pids.add(pid)
            if len(held) == 1:
                self._sole_mount[pid] = held.pop()
        for used in self.mounts.values():
            m = used.mount
            attrs = {
                "mountpoint": m.mountpoint,
                "fstype": m.fstype,
                "kind": m.kind,
                "device": m.source,
                "block_device": used.block_name,
                "pids": sorted(used.pids)[:16],
            }
            if attrs != used.described:  # attributes are sent when they change
                used.described = attrs
                b.describe(used.entity, **attrs)

    def _use(self, b: BatchBuilder, m: Mount) -> UsedMount:
        used = self.mounts.get(m.mountpoint)
        if used is not None or len(self.mounts) >= _MAX_MOUNTS:
            return used or UsedMount(m, "")
        used = self.mounts[m.mountpoint] = UsedMount(m, f"{ENTITY_PREFIX}{m.mountpoint}")
        kind = m.kind
        if kind == "nfs":
            used.nfs = NfsTracker()
        elif kind == "lustre":
            path, looked = find_stats(self.proc_root, self.sys_root, fsname_of(m.source))
            if path is None:
                message = (
                    f"Lustre statistics of {m.mountpoint} are not readable (looked in "
                    f"{', '.join(looked)}; recent Lustre keeps them in debugfs, root only); "
                    "only the job's own I/O is recorded there"
                )
                b.event("notice", used.entity, message=message, severity="info")
            else:
                used.lustre, used.lustre_stats = LustreTracker(), path
        elif not m.majmin.startswith("0:"):
            if self._blocks is None or m.majmin not in self._blocks:
                self._blocks = block_devices(self.sys_root)
            found = self._blocks.get(m.majmin)
            if found is not None:
                used.block_name, used.block_stat = found
                used.block = BlockTracker()
        return used

    # -- each tick
    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        pids = self.pids()
        if pids and (self._last_scan is None or now - self._last_scan >= self.rescan_s):
            self._last_scan = now
            self._scan(b, pids)
        if not self.mounts:
            return b.build()
        if pids and any(u.nfs is not None for u in self.mounts.values()):
            text = read_bytes_all(os.path.join(self.proc_root, str(pids[0]), "mountstats"))
            wanted = {u.mount.mountpoint for u in self.mounts.values() if u.nfs is not None}
            stats = split_mountstats(text, wanted) if text is not None else {}
            for used in self.mounts.values():
                found = stats.get(used.mount.mountpoint)
                if used.nfs is not None and found is not None:
                    used.nfs.sample(b, used.entity, used.mount.mountpoint, found)
        for used in self.mounts.values():
            if used.lustre is not None and used.lustre_stats is not None:
                text = read_bytes_all(used.lustre_stats)
                if text is not None:
                    used.lustre.sample(b, used.entity, parse_llite_stats(text))
            elif used.block is not None and used.block_stat is not None:
                data = read_bytes(used.block_stat)
                stat = None if data is None else parse_block_stat(data)
                if stat is not None:
                    used.block.sample(b, used.entity, stat, now)
        self._job_io(b, set(pids))
        return b.build()

    def _job_io(self, b: BatchBuilder, live: set[int]) -> None:
        for pid, point in list(self._sole_mount.items()):
            if pid not in live:
                continue
            data = read_bytes(os.path.join(self.proc_root, str(pid), "io"))
            if data is None:
                continue
            used = self.mounts.get(point)
            if used is None:
                continue
            used.attributed = True
            for line in data.split(b"\n")[:2]:  # rchar, wchar
                key, _, value = line.partition(b":")
                try:
                    raw = int(value)
                except ValueError:
                    continue
                which = 0 if key == b"rchar" else 1
                c = self._io.get((pid, which))
                if c is None:
                    c = self._io[(pid, which)] = Cumulative()
                step = c.step(raw) or 0
                if which == 0:
                    used.job_read += step
                else:
                    used.job_write += step
        for used in self.mounts.values():
            if used.attributed:
                b.add(used.entity, "fs.job.read_bytes", used.job_read)
                b.add(used.entity, "fs.job.write_bytes", used.job_write)


def read_bytes_all(path: str) -> str | None:
    """A whole (possibly long) procfs text file, or None if it cannot be read.

    Bare ``os`` reads: a text-mode ``open()`` costs more than reading a mountstats file.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")
