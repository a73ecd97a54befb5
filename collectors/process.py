"""Process-tree collector: the target and every descendant, re-discovered each tick."""

from __future__ import annotations

import psutil

from agent.catalog.process import METRICS, SOURCE, STATE_CODES
from agent.errors import CollectorUnavailable, TargetError
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector, EntityKind, SourceSpec

_SKIP = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def process_role(proc_cmdline: list[str], is_root: bool, parent_is_root: bool) -> str:
    """``main`` for the target, ``worker`` for data-loader style children, else ``child``."""
    if is_root:
        return "main"
    joined = " ".join(proc_cmdline)
    if "multiprocessing" in joined or "torch.distributed" in joined or parent_is_root:
        return "worker"
    return "child"


class ProcessCollector(Collector):
    """Per-process CPU, memory, threads, I/O, context switches and state for the job's tree.

    A process that vanishes or denies access between discovery and reading is skipped, never
    an error. New processes get a ``process_start`` event with their command line and parent;
    exited ones a ``process_exit`` event.
    """

    source = SOURCE

    def __init__(self, root_pid: int | None = None) -> None:
        self.root_pid = root_pid
        self._procs: dict[int, psutil.Process] = {}
        self._last_cpu: dict[int, tuple[float, float]] = {}
        self._root: psutil.Process | None = None
        self.pids: frozenset[int] = frozenset()
        self.root_alive = True

    def start(self, ctx: CollectContext) -> None:
        if self.root_pid is None:
            self.root_pid = ctx.root_pid
        if self.root_pid is None:
            raise CollectorUnavailable("no process to watch")
        try:
            root = psutil.Process(self.root_pid)
            root.cpu_times()
        except psutil.NoSuchProcess:
            raise TargetError(f"no process with pid {self.root_pid}") from None
        except psutil.AccessDenied:
            raise TargetError(
                f"cannot read process {self.root_pid}: permission denied (another user's process?)"
            ) from None
        self._root = root

    def _discover(self) -> list[psutil.Process]:
        root = self._root
        if root is None or not self.root_alive or not root.is_running():
            self.root_alive = False
            return []
        try:
            children = root.children(recursive=True)
        except _SKIP:
            self.root_alive = root.is_running()
            return [root] if self.root_alive else []
        tree = [root]
        for child in children:
            known = self._procs.get(child.pid)
            # Reuse the cached Process (keeps psutil's own state) unless the pid was recycled.
            tree.append(known if known is not None and known == child else child)
        return tree

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        tree = self._discover()
        seen: dict[int, psutil.Process] = {}
        for proc in tree:
            if self._sample(b, proc, now):
                seen[proc.pid] = proc
        for pid in self._procs.keys() - seen.keys():
            b.event("process_exit", str(pid))
            self._last_cpu.pop(pid, None)
        self._procs = seen
        if self.root_pid not in seen:
            self.root_alive = False
        self.pids = frozenset(seen)
        return b.build()

    def _sample(self, b: BatchBuilder, proc: psutil.Process, now: float) -> bool:
        pid = proc.pid
        entity = str(pid)
        try:
            with proc.oneshot():
                cpu = proc.cpu_times()
                mem = proc.memory_info()
                threads = proc.num_threads()
                ctx = proc.num_ctx_switches()
                status = proc.status()
                try:
                    io = proc.io_counters()
                except (psutil.AccessDenied, AttributeError):
                    io = None
                if pid not in self._procs:
                    self._describe(b, proc, pid)
        except _SKIP:
            return False
        b.add(entity, "process.cpu.user", cpu.user)
        b.add(entity, "process.cpu.system", cpu.system)
        used = cpu.user + cpu.system
        prev = self._last_cpu.get(pid)
        if prev is not None and now > prev[1]:
            b.add(entity, "process.cpu.utilization", max(0.0, (used - prev[0]) / (now - prev[1])))
        self._last_cpu[pid] = (used, now)
        b.add(entity, "process.memory.rss", mem.rss)
        b.add(entity, "process.memory.vms", mem.vms)
        b.add(entity, "process.threads", threads)
        if io is not None:
            b.add(entity, "process.io.read_bytes", io.read_bytes)
            b.add(entity, "process.io.write_bytes", io.write_bytes)
        b.add(entity, "process.ctx_switches.voluntary", ctx.voluntary)
        b.add(entity, "process.ctx_switches.involuntary", ctx.involuntary)
        b.add(entity, "process.state", STATE_CODES.get(status, 0))
        return True

    def _describe(self, b: BatchBuilder, proc: psutil.Process, pid: int) -> None:
        ppid = proc.ppid()
        try:
            cmdline = proc.cmdline()
        except _SKIP:
            cmdline = []
        role = process_role(cmdline, pid == self.root_pid, ppid == self.root_pid)
        attrs = {
            "pid": pid,
            "ppid": ppid,
            "name": proc.name(),
            "cmdline": cmdline,
            "role": role,
            "create_time": proc.create_time(),
        }
        b.describe(str(pid), **attrs)
        b.event("process_start", str(pid), ppid=ppid, role=role, cmdline=cmdline)


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
