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
from collectors.storage.block import BlockTracker, block_devices
from collectors.storage.lustre import LustreTracker, find_stats, fsname_of
from collectors.storage.mounts import Mount, MountTable, cwd_of, open_paths, parse_mountinfo
from collectors.storage.nfs import NfsTracker, cut_sections, split_mountstats
from collectors.storage.rows import Layout, Rows, Segment, segment

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
    job_segment: Segment = ((), ())


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
        self._nfs: list[UsedMount] = []  # the mounts read from mountstats
        self._nfs_points: frozenset[str] = frozenset()
        self._nfs_heads: dict[str, str] = {}  # mount point → its mountstats ``device`` line
        self._files: list[UsedMount] = []  # the mounts with a stats file of their own
        self._layout = Layout()
        self._mountinfo: tuple[str, MountTable] | None = None
        self._last_held: object = None  # the mountinfo and open files the last scan mapped

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
        if self._mountinfo is None or self._mountinfo[0] != info:  # mounts seldom change
            self._mountinfo = (info, MountTable(parse_mountinfo(info)))
        table = self._mountinfo[1]
        # what the job holds: read every time (files come and go), mapped only when it changed
        held_by = [(pid, list(open_paths(self.proc_root, pid)), cwd_of(self.proc_root, pid))
                   for pid in pids]  # fmt: skip
        seen = (info, held_by)
        if seen == self._last_held:
            return
        self._last_held = seen
        self._sole_mount.clear()
        for used in self.mounts.values():
            used.pids.clear()
        for pid, paths, cwd in held_by:
            held: set[str] = set()
            for fd, path in paths:
                m = table.find(path)
                if m is not None and m.kind not in _IGNORED_KINDS:
                    if fd > 2:  # stdio (a log file, a terminal) says nothing of its data I/O
                        held.add(m.mountpoint)
                    self._use(b, m).pids.add(pid)
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
        entity = f"{ENTITY_PREFIX}{m.mountpoint}"
        used = self.mounts[m.mountpoint] = UsedMount(m, entity)
        used.job_segment = segment(entity, ("fs.job.read_bytes", "fs.job.write_bytes"))
        kind = m.kind
        if kind == "nfs":
            used.nfs = NfsTracker(entity, m.mountpoint)
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
                used.lustre, used.lustre_stats = LustreTracker(entity), path
        elif not m.majmin.startswith("0:"):
            if self._blocks is None or m.majmin not in self._blocks:
                self._blocks = block_devices(self.sys_root)
            found = self._blocks.get(m.majmin)
            if found is not None:
                used.block_name, used.block_stat = found
                used.block = BlockTracker(entity)
        self._nfs = [u for u in self.mounts.values() if u.nfs is not None]
        self._nfs_points = frozenset(u.mount.mountpoint for u in self._nfs)
        self._nfs_heads = {}
        self._files = [u for u in self.mounts.values() if u.lustre or u.block]
        return used

    # -- each tick
    def collect(self, now: float) -> Batch:
        pids = self.pids()
        scanned: Batch | None = None  # events and attributes: at a rescan only
        if pids and (self._last_scan is None or now - self._last_scan >= self.rescan_s):
            self._last_scan = now
            b = BatchBuilder(self.source, now)
            self._scan(b, pids)
            scanned = b.build()
        if not self.mounts:
            return scanned or Batch(self.source, now, [], [], [])
        rows = Rows()
        if pids and self._nfs:
            text = read_bytes_all(os.path.join(self.proc_root, str(pids[0]), "mountstats"))
            if text is not None:
                stats = cut_sections(text, self._nfs_heads) if self._nfs_heads else None
                if stats is None:
                    stats = split_mountstats(text, self._nfs_points)
                    self._nfs_heads = {p: sec.head for p, sec in stats.items()}
                for used in self._nfs:
                    found = stats.get(used.mount.mountpoint)
                    if found is not None:
                        used.nfs.sample(rows, found)  # type: ignore[union-attr]
        for used in self._files:
            if used.lustre is not None:
                text = read_bytes_all(used.lustre_stats)  # type: ignore[arg-type]
                if text is not None:
                    used.lustre.sample(rows, text)
            elif used.block is not None:
                data = read_bytes(used.block_stat)  # type: ignore[arg-type]
                if data is not None:
                    used.block.sample(rows, data, now)
        self._job_io(rows, pids)
        entities, metrics = self._layout.columns(rows)
        if scanned is None:
            return Batch(self.source, now, entities, metrics, rows.values)
        return Batch(self.source, now, entities, metrics, rows.values, scanned.events,
                     scanned.entity_attrs)  # fmt: skip

    def _job_io(self, rows: Rows, pids: list[int]) -> None:
        """Bytes the job's processes read and wrote (``io``: rchar, wchar), on the one mount
        that holds their open files."""
        if not self._sole_mount:
            return
        live = set(pids)
        for pid, point in self._sole_mount.items():
            if pid not in live:
                continue
            used = self.mounts.get(point)
            if used is None:
                continue
            data = read_bytes(os.path.join(self.proc_root, str(pid), "io"))
            if data is None:
                continue
            used.attributed = True
            rchar, _, rest = data.partition(b"\n")
            wchar = rest.partition(b"\n")[0]
            for which, line in ((0, rchar), (1, wchar)):
                key, _, value = line.partition(b":")
                try:
                    raw = int(value)
                except ValueError:
                    continue
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
                rows.add(used.job_segment, (used.job_read, used.job_write))


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
