"""Process-tree collector: the target and every descendant, re-discovered each tick.

Discovery walks only the job's own tree: each process's ``task/TID/children`` files
(``CONFIG_PROC_CHILDREN``, present on every mainstream kernel), so its cost does not depend on
the host's other processes. Without those files it falls back to reading every process's
parent from ``/proc/*/stat`` (what ``psutil.Process.children`` does). Each process costs three
small reads per tick (``stat``, ``status``, ``io``: one fewer than psutil's ``oneshot`` of the
same fields); its command line, name and start time are read once, when it appears.
"""

from __future__ import annotations

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


class _Tracked:
    """What is kept of one process between ticks: identity and the last CPU reading."""

    __slots__ = ("entity", "start", "used", "at")

    def __init__(self, entity: str, start: int) -> None:
        self.entity = entity
        self.start = start  # starttime in clock ticks: a recycled pid has another one
        self.used = -1.0
        self.at = 0.0


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

    def start(self, ctx: CollectContext) -> None:
        if self.root_pid is None:
            self.root_pid = ctx.root_pid
        if self.root_pid is None:
            raise CollectorUnavailable("no process to watch")
        if self.proc_root is None:
            self.proc_root = ctx.proc_root
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
            tids = [pid] if threads == 1 else _tids(f"{proc}/{pid}/task")
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
        try:
            raw = read(f"{base}/stat")
            state, ppid, utime, stime, threads, start = parse_stat(raw)
            status = read(f"{base}/status")
        except (OSError, ValueError, IndexError):  # gone, or a torn read: skip this tick
            return 0
        rss, vms = parse_memory(status)
        ctx = parse_ctx_switches(status)
        try:
            io = parse_io(read(f"{base}/io"))
        except OSError:  # another user's process, or a kernel without task I/O accounting
            io = None
        known = self._tracked.get(pid)
        if known is None or known.start != start:
            if known is not None:  # the pid was recycled: the old process exited
                b.event("process_exit", known.entity)
            known = _Tracked(str(pid), start)
            self._describe(b, pid, known, ppid, raw)
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
