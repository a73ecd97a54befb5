"""Process-tree collector: the target and every descendant, re-discovered each tick.

Discovery walks only the job's own tree: each process's ``task/TID/children`` files
(``CONFIG_PROC_CHILDREN``, present on every mainstream kernel), so its cost does not depend on
the host's other processes. Without those files it falls back to reading every process's
parent from ``/proc/*/stat`` (what ``psutil.Process.children`` does). Each process costs three
small reads per tick (``stat``, ``status``, ``io``: one fewer than psutil's ``oneshot`` of the
same fields) and its ``children``, from files kept open on the real procfs for the first
:data:`MAX_KEPT_PROCESSES` processes (a ``pread`` each instead of open, read and close); its
command line, name and start time are read once, when it appears.
"""

from __future__ import annotations

import contextlib
import os

from agent.catalog.process import METRICS, SOURCE, STATE_CODES
from agent.errors import CollectorUnavailable, TargetError
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector, EntityKind, SourceSpec
from collectors.procfs import (
    STATE_NAMES,
    boot_time,
    parse_children,
    parse_cmdline,
    parse_ctx_switches,
    parse_io,
    parse_memory,
    parse_stat,
    pread_from_start,
    process_name,
    read,
    read_all,
    stat_comm,
)

_STATE_CODE = {letter: float(STATE_CODES.get(name, 0)) for letter, name in STATE_NAMES.items()}
_HEAD = ("process.cpu.user", "process.cpu.system")
_UTIL = ("process.cpu.utilization",)
_MEM = ("process.memory.rss", "process.memory.vms", "process.threads")
_IO = ("process.io.read_bytes", "process.io.write_bytes")
_CTX = ("process.ctx_switches.voluntary", "process.ctx_switches.involuntary")
_STATE = ("process.state",)
#: The metric names of one process's row, by (has utilization, io counters, context switches).
_ROWS = {
    (util, io, ctx): _HEAD
    + (_UTIL if util else ())
    + _MEM
    + (_IO if io else ())
    + (_CTX if ctx else ())
    + _STATE
    for util in (False, True)
    for io in (False, True)
    for ctx in (False, True)
}


def process_role(proc_cmdline: list[str], is_root: bool, parent_is_root: bool) -> str:
    """``main`` for the target, ``worker`` for data-loader style children, else ``child``."""
    if is_root:
        return "main"
    joined = " ".join(proc_cmdline)
    if "multiprocessing" in joined or "torch.distributed" in joined or parent_is_root:
        return "worker"
    return "child"


#: At most this many processes keep their four files open between ticks (4 descriptors
#: each); the rest of a bigger tree opens them each tick, as every process used to.
MAX_KEPT_PROCESSES = 128


class _Tracked:
    """What is kept of one process between ticks: identity, the last CPU reading and, on the
    real procfs, its ``stat``, ``status``, ``io`` and main thread's ``children`` files open
    (see :func:`_open_files`)."""

    __slots__ = ("entity", "start", "used", "at", "files")

    def __init__(self, entity: str, start: int) -> None:
        self.entity = entity
        self.start = start  # starttime in clock ticks: a recycled pid has another one
        self.used = -1.0
        self.at = 0.0
        self.files: tuple[int, int, int | None, int | None] | None = None

    def close(self) -> None:
        files, self.files = self.files, None
        for fd in files or ():
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _open_files(base: str, pid: int) -> tuple[int, int, int | None, int | None] | None:
    """``stat``, ``status``, ``io`` and the main thread's ``task/PID/children`` of one process,
    opened once: a procfs file read again at offset 0 (``pread``) is generated afresh, so each
    tick costs a read per file instead of an open, a read and a close (about a third of the
    tree's syscall time; a childless process's ``children`` is one empty read instead of four
    calls). An open file stays bound to its process: once it exits a read of ``stat`` fails
    (ESRCH) even if its pid is reused, and the collector reads the pid's files by path again
    (``children`` is read only after ``stat`` answered in the same tick). ``io`` is None where
    it cannot be opened (another user's process), ``children`` where the kernel lacks it."""
    try:
        stat = os.open(f"{base}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        status = os.open(f"{base}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(stat)
        return None
    try:
        io: int | None = os.open(f"{base}/io", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        io = None
    try:
        children: int | None = os.open(f"{base}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        children = None
    return stat, status, io, children


_CHUNK = 8192


class ProcessCollector(Collector):
    """Per-process CPU, memory, threads, I/O, context switches and state for the job's tree.

    A process that vanishes or denies access between discovery and reading is skipped, never
    an error. New processes get a ``process_start`` event with their command line and parent;
    exited ones a ``process_exit`` event.
    """

    source = SOURCE

    def __init__(self, root_pid: int | None = None, proc_root: str | None = None) -> None:
        self.root_pid = root_pid
        self.proc_root = proc_root
        self._tracked: dict[int, _Tracked] = {}
        self.pids: frozenset[int] = frozenset()
        self.root_alive = True
        #: Discovery reads ``task/TID/children`` (False: the whole-/proc fallback).
        self.children_files = True
        self._tick = 1.0 / os.sysconf("SC_CLK_TCK")
        self._boot = 0.0
        self.keep_files = False
        self._kept = 0  # processes whose files are open

    def start(self, ctx: CollectContext) -> None:
        if self.root_pid is None:
            self.root_pid = ctx.root_pid
        if self.root_pid is None:
            raise CollectorUnavailable("no process to watch")
        if self.proc_root is None:
            self.proc_root = ctx.proc_root
        # Only the kernel's procfs regenerates a file on each read: files written under an
        # injected root (captures, tests) may be replaced, so they are opened each tick.
        self.keep_files = os.path.realpath(self.proc_root) == "/proc"
        root = f"{self.proc_root}/{self.root_pid}"
        try:
            read(f"{root}/stat")
        except FileNotFoundError:
            raise TargetError(f"no process with pid {self.root_pid}") from None
        except PermissionError:
            raise TargetError(
                f"cannot read process {self.root_pid}: permission denied (another user's process?)"
            ) from None
        except OSError as exc:
            raise TargetError(f"cannot read process {self.root_pid}: {exc.strerror}") from None
        self.children_files = os.path.exists(f"{root}/task/{self.root_pid}/children")
        try:
            self._boot = boot_time(self.proc_root)
        except (OSError, ValueError):
            self._boot = 0.0

    def close(self) -> None:
        for known in self._tracked.values():
            known.close()
        self._kept = 0

    # -- the tick -------------------------------------------------------------------------------
    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        root = self.root_pid
        seen: dict[int, _Tracked] = {}
        if root is not None and self.root_alive:
            if self.children_files:
                self._walk(b, root, now, seen)
            else:
                for pid in self._scan_tree(root):
                    self._sample(b, pid, now, seen)
        for pid in self._tracked.keys() - seen.keys():
            gone = self._tracked[pid]
            if gone.files is not None:
                gone.close()
                self._kept -= 1
            b.event("process_exit", str(pid))
        self._tracked = seen
        if root not in seen:
            self.root_alive = False
        self.pids = frozenset(seen)
        return b.build()

    def _walk(self, b: BatchBuilder, root: int, now: float, seen: dict[int, _Tracked]) -> None:
        """Breadth-first from the root through each sampled process's children files."""
        queue = [root]
        proc = self.proc_root
        for pid in queue:  # grows while it is walked
            threads = self._sample(b, pid, now, seen)
            if threads == 0:
                continue
            if threads == 1:
                files = seen[pid].files
                if files is not None and files[3] is not None:  # its one thread's, kept open
                    try:
                        data = pread_from_start(files[3], _CHUNK, records=True)
                    except OSError:
                        continue
                    if data:
                        queue.extend(c for c in parse_children(data) if c not in seen)
                    continue
                tids = [pid]
            else:
                tids = _tids(f"{proc}/{pid}/task")
            for tid in tids:
                try:
                    data = read_all(f"{proc}/{pid}/task/{tid}/children")
                except OSError:
                    continue
                if data:
                    queue.extend(c for c in parse_children(data) if c not in seen)

    def _scan_tree(self, root: int) -> list[int]:
        """The fallback: every process's parent from ``/proc/*/stat``, then the root's tree."""
        kids: dict[int, list[int]] = {}
        for name in os.listdir(self.proc_root):
            if name.isdigit():
                try:
                    ppid = parse_stat(read(f"{self.proc_root}/{name}/stat"))[1]
                except (OSError, ValueError, IndexError):
                    continue
                kids.setdefault(ppid, []).append(int(name))
        tree, done = [root], {root}
        for pid in tree:
            for child in kids.get(pid, ()):
                if child not in done:
                    done.add(child)
                    tree.append(child)
        return tree

    def _sample(self, b: BatchBuilder, pid: int, now: float, seen: dict[int, _Tracked]) -> int:
        """One process's row; its thread count (0: it vanished or cannot be read)."""
        if pid in seen:
            return 0
        base = f"{self.proc_root}/{pid}"
        known = self._tracked.get(pid)
        files = known.files if known is not None else None
        try:
            if files is not None:
                try:
                    raw = pread_from_start(files[0], _CHUNK, records=False)
                    status = pread_from_start(files[1], _CHUNK, records=False)
                except OSError:  # that process exited: whatever has its pid now, by path
                    assert known is not None
                    known.close()
                    self._kept -= 1
                    files = None
            if files is None:
                raw = read(f"{base}/stat")
                status = read(f"{base}/status")
            state, ppid, utime, stime, threads, start = parse_stat(raw)
        except (OSError, ValueError, IndexError):  # gone, or a torn read: skip this tick
            return 0
        rss, vms = parse_memory(status)
        ctx = parse_ctx_switches(status)
        try:
            if files is None or files[2] is None:
                io = parse_io(read(f"{base}/io"))
            else:
                io = parse_io(pread_from_start(files[2], _CHUNK, records=False))
        except OSError:  # another user's process, or a kernel without task I/O accounting
            io = None
        if known is None or known.start != start:
            if known is not None:  # the pid was recycled: the old process exited
                b.event("process_exit", known.entity)
                if known.files is not None:
                    known.close()
                    self._kept -= 1
            known = _Tracked(str(pid), start)
            self._describe(b, pid, known, ppid, raw)
        if known.files is None and self.keep_files and self._kept < MAX_KEPT_PROCESSES:
            known.files = _open_files(base, pid)
            self._kept += known.files is not None
        seen[pid] = known
        tick = self._tick
        user, system = utime * tick, stime * tick
        used = user + system
        util = known.used >= 0 and now > known.at
        values = [user, system]
        if util:
            values.append(max(0.0, (used - known.used) / (now - known.at)))
        known.used, known.at = used, now
        values += (rss, vms, float(threads))
        if io is not None:
            values += (float(io[0]), float(io[1]))
        if ctx is not None:
            values += (float(ctx[0]), float(ctx[1]))
        values.append(_STATE_CODE.get(state, 0.0))
        b.add_row(known.entity, _ROWS[util, io is not None, ctx is not None], values)
        return threads or 1

    def _describe(self, b: BatchBuilder, pid: int, known: _Tracked, ppid: int, stat: bytes) -> None:
        """Static attributes, read once per process: command line, name, parent, start time."""
        try:
            cmdline = parse_cmdline(read_all(f"{self.proc_root}/{pid}/cmdline"))
        except OSError:
            cmdline = []
        role = process_role(cmdline, pid == self.root_pid, ppid == self.root_pid)
        b.describe(
            known.entity,
            pid=pid,
            ppid=ppid,
            name=process_name(stat_comm(stat), cmdline),
            cmdline=cmdline,
            role=role,
            create_time=self._boot + known.start * self._tick,
        )
        b.event("process_start", known.entity, ppid=ppid, role=role, cmdline=cmdline)


def _tids(task_dir: str) -> list[str]:
    try:
        return os.listdir(task_dir)
    except OSError:
        return []


SPEC = SourceSpec(
    name=SOURCE,
    label="Process tree",
    metrics=tuple(METRICS),
    entity_kinds=(
        EntityKind(
            "process",
            "(?P<pid>[0-9]+)",
            {
                "process.pid": "{pid}",
                "process.executable.name": "{name}",
                "accelwatch.process.role": "{role}",
            },
        ),
    ),
    collector=ProcessCollector,
    start_order=0,  # first: the other sources ask for the tree's pids
)
