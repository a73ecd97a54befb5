"""Record a simulated run into a real DuckDB file, fast: simulated NVML GPUs (named scenarios)
driven by a fake clock through the real NvmlCollector and Sampler, plus synthetic host and
process collectors whose signals the test chooses (loader CPU, iowait, swap, write bursts)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

from agent.catalog.steps import SOURCE as STEPS_SOURCE
from agent.catalog.steps import rank_entity
from agent.model import Batch, BatchBuilder, RunInfo
from agent.sampler import Sampler
from agent.snapshot import SnapshotHub
from agent.source import CollectContext, Collector
from agent.store import Store
from tests.helpers import wait_until

T0 = 1_700_000_000.0
JOB_PID = 4242
SCENARIO_DIR = Path(__file__).parent / "scenarios"

Signal = float | Callable[[float], float]


@dataclass
class HostProfile:
    """Host and process-tree behaviour; each field is a value or a function of run time."""

    cpu: Signal = 0.35
    iowait: Signal = 0.01
    mem_util: Signal = 0.45
    swap_in: Signal = 0.0  # bytes/s
    disk_read: Signal = 40e6  # bytes/s
    disk_write: Signal = 2e6  # bytes/s
    disk_busy: Signal = 0.1
    main_cpu: Signal = 0.6  # cores
    worker_cpu: Signal = 0.4  # cores, each loader worker
    workers: int = 4
    cores: int = 8

    def at(self, name: str, t: float) -> float:
        value = getattr(self, name)
        return float(value(t) if callable(value) else value)


class SyntheticHost(Collector):
    """Host metrics (source ``host``) following a :class:`HostProfile`; counters integrate rates."""

    source = "host"

    def __init__(self, profile: HostProfile, t0: float) -> None:
        self.profile, self.t0 = profile, t0
        self.totals = {"read": 0.0, "write": 0.0, "busy": 0.0, "swap": 0.0}
        self.last = t0

    def collect(self, now: float) -> Batch:
        p, t, dt = self.profile, now - self.t0, now - self.last
        self.last = now
        b = BatchBuilder(self.source, now)
        cpu = p.at("cpu", t)
        b.add_many(
            "host",
            {
                "host.cpu.utilization": cpu,
                "host.cpu.iowait": p.at("iowait", t),
                "host.cpu.count": p.cores,
                "host.memory.utilization": p.at("mem_util", t),
                "host.memory.total": 512 * 2**30,
            },
        )
        for core in range(p.cores):
            b.add(f"cpu{core}", "host.cpu.utilization", cpu)
        for key, name in (
            ("read", "disk_read"),
            ("write", "disk_write"),
            ("busy", "disk_busy"),
            ("swap", "swap_in"),
        ):
            self.totals[key] += p.at(name, t) * dt
        b.add("host", "host.swap.in", self.totals["swap"])
        b.add_many(
            "disk:nvme0n1",
            {
                "host.disk.read_bytes": self.totals["read"],
                "host.disk.write_bytes": self.totals["write"],
                "host.disk.busy_time": self.totals["busy"],
            },
        )
        return b.build()


class SyntheticProcesses(Collector):
    """The job's main process and its loader workers (source ``process``) with roles."""

    source = "process"

    def __init__(self, profile: HostProfile, t0: float) -> None:
        self.profile, self.t0 = profile, t0
        self.described = False

    def collect(self, now: float) -> Batch:
        p, t = self.profile, now - self.t0
        b = BatchBuilder(self.source, now)
        pids = [JOB_PID, *range(JOB_PID + 1, JOB_PID + 1 + p.workers)]
        for pid in pids:
            main = pid == JOB_PID
            if not self.described:
                b.describe(
                    str(pid),
                    pid=pid,
                    ppid=1 if main else JOB_PID,
                    role="main" if main else "worker",
                    name="python",
                )
            b.add(
                str(pid), "process.cpu.utilization", p.at("main_cpu" if main else "worker_cpu", t)
            )
            b.add(str(pid), "process.memory.rss", 2 * 2**30)
        self.described = True
        return b.build()


class ReplayBatches(Collector):
    """Replays precomputed batches of one source by tick time (synthetic GPUs, step logs)."""

    def __init__(self, source: str, make: Callable[[float, BatchBuilder], None], t0: float) -> None:
        self.source, self.make, self.t0 = source, make, t0

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        self.make(now - self.t0, b)
        return b.build()


@dataclass
class Recording:
    """What to record; ``record`` returns (db path, run id)."""

    scenario: str | None = "healthy"
    seconds: int = 90
    host: HostProfile = field(default_factory=HostProfile)
    with_host: bool = True
    extra: Iterable[tuple[str, Callable[[float, BatchBuilder], None]]] = ()
    run_id: str = "run-1"
    #: Further sources' collectors (a registered source's ``spec.collector``), started as the
    #: session starts them.
    collectors: Iterable[Callable[[], Collector]] = ()


def scenario_ref(name: str) -> str:
    """A named scenario, or one of the test scenarios in tests/analysis/scenarios/."""
    local = SCENARIO_DIR / f"{name}.toml"
    return str(local) if local.exists() else name


def record(
    path: Path,
    spec: Recording,
    on_tick: Callable[[float, Store], None] | None = None,
    tick_every: int = 1,
    hub: SnapshotHub | None = None,
    on_start: Callable[[Store], None] | None = None,
) -> tuple[Path, str]:
    """Record ``spec`` into ``path``; with ``on_tick`` the ticks are written every
    ``tick_every`` ticks and ``on_tick(now, store)`` runs after that (live analysis tests),
    else all at the end. The sampler publishes every tick to ``hub`` if given; ``on_start(store)``
    runs before the first tick (a session starts its consumers before its sampler)."""
    clock = [T0]
    collectors: list[Collector] = []
    sim = None
    if spec.scenario is not None:
        from collectors.nvml import NvmlCollector
        from collectors.sim import install, load_scenario

        sim = install(
            load_scenario(scenario_ref(spec.scenario)),
            clock=lambda: clock[0],
            job_pids=lambda: [JOB_PID],
        )
        nvml = NvmlCollector(clock=lambda: clock[0])
        nvml.start(CollectContext(root_pid=JOB_PID, job_pids=lambda: frozenset({JOB_PID})))
        collectors.append(nvml)
    if spec.with_host:
        collectors += [SyntheticHost(spec.host, T0), SyntheticProcesses(spec.host, T0)]
    collectors += [ReplayBatches(source, make, T0) for source, make in spec.extra]
    for factory in spec.collectors:
        collector = factory()
        collector.start(CollectContext(root_pid=JOB_PID, job_pids=lambda: frozenset({JOB_PID})))
        collectors.append(collector)
    store = Store(path)
    try:
        store.write_run(
            RunInfo(
                spec.run_id,
                spec.scenario or "cpu-only",
                JOB_PID,
                ["train.py"],
                "/",
                "test",
                T0,
                1.0,
                str(path),
                simulated=sim is not None,
                scenario=spec.scenario,
                ended=T0 + spec.seconds,
                status="finished",
            )
        )
        ticks: list[tuple[str, list[Batch]]] = []
        sampler = Sampler(
            collectors,
            1.0,
            sinks=[lambda now, b: ticks.append((spec.run_id, b))],
            clock=lambda: clock[0],
            hub=hub,
        )
        if on_start is not None:
            on_start(store)
        settle = sim is not None
        for tick in range(1, spec.seconds + 1):
            clock[0] += 1.0
            # the XID thread takes this tick's events before it is sampled (once it fails to,
            # the recording goes on without waiting: its findings' times then tell)
            if settle and not wait_until(sim.events_settled, timeout=10.0, step=0.001):
                settle = False
            sampler.step(clock[0])
            if on_tick is not None and tick % tick_every == 0:
                store.write_ticks(ticks)
                ticks.clear()
                on_tick(clock[0], store)
        store.write_ticks(ticks)
    finally:
        for c in collectors:
            c.close()
        if sim is not None:
            sim.uninstall()
        store.close()
    return path, spec.run_id


def step_log(
    times: Callable[[int, float], float | None], ranks: int
) -> tuple[str, Callable[[float, BatchBuilder], None]]:
    """A per-rank step-time source: ``times(rank, t)`` seconds, or None for no step."""

    def make(t: float, b: BatchBuilder) -> None:
        for rank in range(ranks):
            value = times(rank, t)
            b.add(rank_entity(rank), "step.time", value)

    return STEPS_SOURCE, make


def profile(**overrides: Signal) -> HostProfile:
    known = {f.name for f in fields(HostProfile)}
    unknown = set(overrides) - known
    assert not unknown, unknown
    return HostProfile(**overrides)  # type: ignore[arg-type]
