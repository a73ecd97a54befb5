"""The storage collector: the job's mounts and, per type, what the kernel keeps about them.

Every ``rescan_s`` (and at the first tick) the job's open files and working directories are
mapped onto the mounts of its ``mountinfo``; a mount once used stays reported for the run.
Each tick then reads each needed file once: ``mountstats`` (one read for every NFS mount),
each Lustre ``stats`` file, each backing device's ``stat``, and ``io`` of the processes whose
open files (beyond stdin, stdout and stderr) all sit on one mount: their ``rchar`` / ``wchar``
are the mount's ``fs.job.read_bytes`` / ``write_bytes`` when they hold no pipe or socket beyond
stdio (those bytes are in ``rchar`` / ``wchar`` too), and their ``read_bytes`` / ``write_bytes``
(block I/O only) the mount's ``fs.job.device_*`` when it is a local filesystem on a block device
the collector knows, pipes and sockets or not (files in memory, tmpfs, do no block I/O and do not
count as a second mount there). A process with files on several mounts is not split between them.

Replaying a captured tree (``--proc-root`` not ``/proc``): when none of the job's pids exist
under the root, the processes captured there stand in for the job.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import NamedTuple

from agent.catalog.storage import ENTITY_PREFIX, SOURCE
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector
from collectors.fabric.counters import Cumulative
from collectors.fabric.ports import read_bytes
from collectors.fabric.table import read_all
from collectors.storage.block import BlockTracker, block_devices
from collectors.storage.lustre import LustreTracker, find_stats, fsname_of
from collectors.storage.mounts import Mount, MountTable, cwd_of, open_paths, parse_mountinfo
from collectors.storage.nfs import NfsTracker, find_heads
from collectors.storage.rows import Layout, Rows, Segment, segment

log = logging.getLogger(__name__)

DEFAULT_RESCAN_S = 5.0
#: Set by the storage simulator (collectors/sim/fabric_storage) to its fake trees.
ENV_PROC_ROOT = "ACCELWATCH_STORAGE_PROC_ROOT"
ENV_SYS_ROOT = "ACCELWATCH_STORAGE_SYS_ROOT"
#: Mount kinds whose files are in memory or are kernel interfaces: never the job's storage.
_IGNORED_KINDS = ("pseudo",)
_MAX_MOUNTS = 64
#: Lines of ``<proc>/<pid>/io``: rchar, wchar (any read/write, pipes and sockets included) and
#: read_bytes, write_bytes (what the process caused to be read from / written to storage).
_CHARS = (0, 1)
_DEVICE = (4, 5)


class Tie(NamedTuple):
    """The one mount a process's open files sit on, and which of its ``io`` figures are that
    mount's: ``chars`` (rchar/wchar: no pipe or socket beyond stdio), ``device`` (read_bytes/
    write_bytes: a local filesystem on a known block device; pipes and sockets allowed)."""

    mountpoint: str
    chars: bool
    device: bool


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
    device_read: int = 0
    device_write: int = 0
    device_attributed: bool = False
    described: dict | None = None
    job_segment: Segment = ((), ())
    device_segment: Segment = ((), ())

    @property
    def block_backed(self) -> bool:
        """Whether the job's block I/O (``read_bytes``/``write_bytes``) on its files is this
        mount's: a local filesystem on a block device found in ``<sys>/block``. Network and
        FUSE filesystems account these bytes their own way (NFS counts pages it asks the server
        for, FUSE none of a daemon's), tmpfs does no block I/O: none is tied there."""
        return self.block is not None and self.mount.kind == "local"


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
        self._sole_mount: dict[int, Tie] = {}  # pid → the one mount holding its open files
        self._io: dict[tuple[int, int], Cumulative] = {}
        self._blocks: dict[str, tuple[str, str]] | None = None
        self._real_proc = True
        self._nfs: list[NfsTracker] = []  # the mounts read from mountstats
        #: The mounts with a stats file of their own: Lustre's (procfs, read whole), and the
        #: block devices' (sysfs, read in one loop, the one the fabric source reads with).
        self._lustre: list[tuple[LustreTracker, str]] = []
        self._blocks_read: list[BlockTracker] = []
        self._block_paths: list[str] = []
        self._layout = Layout()
        self._mountinfo: tuple[str, MountTable] | None = None
        self._last_held: object = None  # the mountinfo and open files the last scan mapped
        self._job: tuple[frozenset[int], list[int]] | None = None  # job_pids() → pids()
        self._live: list[int] = []  # the pids read (pids() as of the last rescan)
        self._paths: dict[tuple[int, str], str] = {}  # (pid, name) → <proc>/<pid>/<name>

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
        job = self.ctx.job_pids()
        known = self._job
        if known is not None and (known[0] is job or known[0] == job):
            pids = known[1]  # the job's processes did not change: the same list
        else:
            pids = sorted(job)
            if self.ctx.root_pid is not None and self.ctx.root_pid not in pids:
                pids.insert(0, self.ctx.root_pid)
            self._job = (job, pids)
        if self._real_proc:  # the live machine: the job's pids as the tree knows them
            return pids
        live = [p for p in pids if os.path.isdir(self._path(p, ""))]
        if live:
            return live
        try:  # a captured tree: its processes stand in for the job
            return sorted(int(n) for n in os.listdir(self.proc_root) if n.isdigit())
        except OSError:
            return []

    def _scan(self, b: BatchBuilder, pids: list[int]) -> None:
        info = None
        for pid in pids:
            data = read_bytes_all(self._path(pid, "mountinfo"))
            if data is not None:
                info = data.decode("utf-8", "replace")
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
        before = self._sole_mount
        self._sole_mount = {}
        for used in self.mounts.values():
            used.pids.clear()
        for pid, paths, cwd in held_by:
            held: set[str] = set()
            in_memory: set[str] = set()  # tmpfs: no block I/O, not a second mount for it
            streams = False  # a pipe or socket beyond stdio: its bytes are in rchar/wchar too
            for fd, path in paths:
                if not path:
                    streams = streams or fd > 2
                    continue
                m = table.find(path)
                if m is not None and m.kind not in _IGNORED_KINDS:
                    if fd > 2:  # stdio (a log file, a terminal) says nothing of its data I/O
                        held.add(m.mountpoint)
                        if m.kind == "memory":
                            in_memory.add(m.mountpoint)
                    self._use(b, m).pids.add(pid)
            m = None if cwd is None else table.find(cwd)
            if m is not None and m.kind not in _IGNORED_KINDS:
                self._use(b, m).pids.add(pid)
            tie = self._tie(held, in_memory, streams)
            if tie is not None:
                self._sole_mount[pid] = tie
        self._forget_untied(before)
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

    def _tie(self, held: set[str], in_memory: set[str], streams: bool) -> Tie | None:
        """Which of a process's figures one mount may claim, from the mounts of its open files
        (``held``, fd > 2), those of them in memory, and whether it holds a pipe or socket."""
        chars = len(held) == 1 and not streams
        on_disk = held - in_memory if in_memory else held
        point = next(iter(held)) if chars else next(iter(on_disk), "")
        used = self.mounts.get(point) if len(on_disk) == 1 else None
        device = used is not None and used.block_backed
        return Tie(point, chars, device) if chars or device else None

    def _forget_untied(self, before: dict[int, Tie]) -> None:
        """Drop the counters of figures no longer tied to the same mount: when tied again their
        next reading starts afresh, so bytes moved meanwhile (through a pipe, on another mount)
        are not added to a mount."""
        for pid, old in before.items():
            new = self._sole_mount.get(pid)
            if new is None or new.mountpoint != old.mountpoint:
                new = Tie(old.mountpoint, False, False)
            for lines, was, now in (
                (_CHARS, old.chars, new.chars),
                (_DEVICE, old.device, new.device),
            ):
                if was and not now:
                    for which in lines:
                        self._io.pop((pid, which), None)

    def _use(self, b: BatchBuilder, m: Mount) -> UsedMount:
        used = self.mounts.get(m.mountpoint)
        if used is not None or len(self.mounts) >= _MAX_MOUNTS:
            return used or UsedMount(m, "")
        entity = f"{ENTITY_PREFIX}{m.mountpoint}"
        used = self.mounts[m.mountpoint] = UsedMount(m, entity)
        used.job_segment = segment(entity, ("fs.job.read_bytes", "fs.job.write_bytes"))
        used.device_segment = segment(
            entity, ("fs.job.device_read_bytes", "fs.job.device_write_bytes")
        )
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
        self._nfs = [u.nfs for u in self.mounts.values() if u.nfs is not None]
        used_all = list(self.mounts.values())
        self._lustre = [(u.lustre, u.lustre_stats) for u in used_all
                        if u.lustre is not None and u.lustre_stats is not None]  # fmt: skip
        blocks = [u for u in used_all if u.block is not None and u.block_stat is not None]
        self._blocks_read = [u.block for u in blocks if u.block is not None]
        self._block_paths = [u.block_stat for u in blocks if u.block_stat is not None]
        return used

    # -- each tick
    def collect(self, now: float) -> Batch:
        rescan = self._last_scan is None or now - self._last_scan >= self.rescan_s
        if rescan or self._real_proc:  # a tree's processes are looked for at a rescan
            self._live = self.pids()
        pids = self._live
        scanned: Batch | None = None  # events and attributes: at a rescan only
        if pids and rescan:
            self._last_scan = now
            b = BatchBuilder(self.source, now)
            self._scan(b, pids)
            scanned = b.build()
        if not self.mounts:
            return scanned or Batch(self.source, now, [], [], [])
        rows = Rows()
        if pids and self._nfs:
            self._sample_nfs(rows, pids, scanned is not None)
        for lustre, path in self._lustre:
            data = read_bytes_all(path)
            if data is not None:
                lustre.sample(rows, data, now)
        if self._block_paths:
            for block, data in zip(self._blocks_read, read_all(self._block_paths)):
                if data is not None:
                    block.sample(rows, data, now)
        self._job_io(rows, pids)
        entities, metrics = self._layout.columns(rows)
        if scanned is None:
            return Batch(self.source, now, entities, metrics, rows.values)
        return Batch(self.source, now, entities, metrics, rows.values, scanned.events,
                     scanned.entity_attrs)  # fmt: skip

    def _sample_nfs(self, rows: Rows, pids: list[int], rescanned: bool) -> None:
        """Every NFS mount's section of one read of ``mountstats``, each found in place by its
        device line; the file is cut whole only for a tracker whose line is not there (a new
        mount; a remount, at once; an unmounted one, at rescans)."""
        text = read_bytes_all(self._path(pids[0], "mountstats"))
        if text is None:
            return
        missing = [t for t in self._nfs if not t.take(rows, text)]
        if not missing:
            return
        lost = {t.mountpoint for t in missing if t.head is not None or rescanned}
        if lost:
            heads = find_heads(text, lost)
            for t in missing:
                if t.mountpoint in lost:
                    found = heads.get(t.mountpoint)
                    t.head = None if found is None else found[0]
                    t.take(rows, text)

    def _path(self, pid: int, name: str) -> str:
        """``<proc>/<pid>/<name>`` (``name`` empty: the process's directory), joined once."""
        path = self._paths.get((pid, name))
        if path is None:
            if len(self._paths) > 65536:  # bounded: the job's processes come and go
                self._paths.clear()
            path = self._paths[(pid, name)] = os.path.join(self.proc_root, str(pid), name)
        return path

    def _job_io(self, rows: Rows, pids: list[int]) -> None:
        """Bytes the job's processes moved (``io``, read once per process) on the one mount
        that holds their open files: ``rchar``/``wchar`` and ``read_bytes``/``write_bytes``,
        each where the process's tie says they are the mount's."""
        if not self._sole_mount:
            return
        live = set(pids)
        for pid, (point, chars, device) in self._sole_mount.items():
            if pid not in live:
                continue
            used = self.mounts.get(point)
            if used is None:
                continue
            data = read_bytes(self._path(pid, "io"))
            if data is None:
                continue
            lines = data.split(b"\n", 6)
            if chars:
                used.attributed = True
                used.job_read += self._step(pid, 0, lines)
                used.job_write += self._step(pid, 1, lines)
            if device and len(lines) > 5:
                used.device_attributed = True
                used.device_read += self._step(pid, 4, lines)
                used.device_write += self._step(pid, 5, lines)
        for used in self.mounts.values():
            if used.attributed:
                rows.add(used.job_segment, (used.job_read, used.job_write))
            if used.device_attributed:
                rows.add(used.device_segment, (used.device_read, used.device_write))

    def _step(self, pid: int, which: int, lines: list[bytes]) -> int:
        """How much line ``which`` of ``pid``'s ``io`` grew since its last reading (0 at the
        first, or if unreadable); a counter that went back (a reused pid) counts from zero."""
        try:
            raw = int(lines[which].partition(b":")[2])
        except (IndexError, ValueError):
            return 0
        c = self._io.get((pid, which))
        if c is None:
            c = self._io[(pid, which)] = Cumulative()
        return c.step(raw) or 0


def read_bytes_all(path: str) -> bytes | None:
    """A whole (possibly long) procfs file, or None if it cannot be read.

    Bare ``os`` reads until one returns nothing (procfs hands a long file over in pieces).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 65536)
        if data and (chunk := os.read(fd, 65536)):  # the rest, in pieces
            chunks = [data, chunk]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data
