"""The baselines the benchmarks measure the agent against, each run as its own process.

    python -m benchmarks._baselines bare --pid PID [--scenario NAME] [--interval 1]
    python -m benchmarks._baselines calls --pid PID --scenario NAME [--rounds 5]
    python -m benchmarks._baselines nvitop-monitor --pid PID --scenario NAME [--interval 1]
    python -m benchmarks._baselines nvitop-tui --scenario NAME [--interval 1]
    python -m benchmarks._baselines scan --db FILE
    python -m benchmarks._baselines session --pid PID --scenario NAME --db FILE --live on|off

With ``--scenario`` the simulated NVML driver is installed in this process exactly as the agent
installs it (``collectors.sim.install``, the watched root owning the GPUs), so the simulator's
own cost is on both sides of a comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

Tick = Callable[[], int]


def install_simulator(scenario: str, root_pid: int | None) -> None:
    """The agent's own installation (agent.app.sources): the root holds the GPUs while alive."""
    from collectors.sim import install, load_scenario

    owners = [root_pid] if root_pid else []
    install(load_scenario(scenario), job_pids=lambda: [p for p in owners if psutil.pid_exists(p)])


def every(interval: float, tick: Tick) -> None:
    """Drift-free loop, like the agent's sampler: tick, then sleep to the next deadline."""
    deadline = time.monotonic()
    while True:
        tick()
        deadline += interval
        time.sleep(max(0.0, deadline - time.monotonic()))


# -- the bare loop: the agent's reads with nothing around them ---------------------------------
def tree_pids(root_pid: int, kept: dict[int, int] | None = None) -> list[int]:
    """The tree as the agent finds it: every thread's ``task/TID/children`` file, from the root
    (so neither side reads the host's other processes); psutil's walk where the kernel lacks
    those files. ``kept``: pid -> its one thread's ``children`` file, opened once and read
    again at offset 0 (to EOF) while the process has one thread, as the agent does."""
    if not os.path.exists(f"/proc/{root_pid}/task/{root_pid}/children"):
        try:
            root = psutil.Process(root_pid)
            return [root_pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.Error:
            return []
    tree, seen = [root_pid], {root_pid}
    for pid in tree:
        fd = kept.get(pid) if kept is not None else None
        if fd is not None:
            data, at = b"", 0
            with contextlib.suppress(OSError):
                while chunk := os.pread(fd, 8192, at):
                    data += chunk
                    at += len(chunk)
            listed = [data]
        else:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            listed = []
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                        listed.append(f.read())
                except OSError:
                    continue
            if kept is not None and len(tids) == 1:
                with contextlib.suppress(OSError):
                    kept[pid] = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY)
        for kid in (int(k) for data in listed for k in data.split()):
            if kid not in seen:
                seen.add(kid)
                tree.append(kid)
    if kept is not None:
        for gone in kept.keys() - seen:
            os.close(kept.pop(gone))
    return tree


def tree_tick(root_pid: int, found: list[int] | None = None) -> Tick:
    """The process collector's work on the watched tree with psutil: the same discovery, then
    psutil's own reads of the fields it records, per process and tick (``oneshot``). ``found``
    is given the tick's pids (the agent's other sources reuse the tree the collector found)."""
    procs: dict[int, psutil.Process] = {}
    kept: dict[int, int] = {}

    def tick() -> int:
        out: list = []
        current: dict[int, psutil.Process] = {}
        for pid in tree_pids(root_pid, kept):
            proc = procs.get(pid)
            try:
                proc = proc if proc is not None else psutil.Process(pid)
                with proc.oneshot():
                    out += [
                        proc.cpu_times(),
                        proc.memory_info(),
                        proc.num_threads(),
                        proc.num_ctx_switches(),
                        proc.status(),
                        proc.io_counters(),
                    ]
            except psutil.Error:
                continue
            current[pid] = proc
        procs.clear()
        procs.update(current)
        if found is not None:
            found[:] = list(current)
        return len(out)

    return tick


def host_tick() -> Tick:
    """The host and disk collectors' syscalls, nothing parsed: ``stat``, ``meminfo``,
    ``vmstat``, ``net/dev`` and ``diskstats`` opened once and read again at offset 0 (the two
    device lists read to EOF, as the kernel may stop a read of them at a page), and the load
    average."""
    chunk = 1 << 16
    single = [os.open(f"/proc/{name}", os.O_RDONLY) for name in ("stat", "meminfo", "vmstat")]
    listed = [os.open(f"/proc/{name}", os.O_RDONLY) for name in ("net/dev", "diskstats")]

    def tick() -> int:
        out: list = [os.pread(fd, chunk, 0) for fd in single]
        for fd in listed:
            at = 0
            while data := os.pread(fd, chunk, at):
                out.append(data)
                at += len(data)
        out.append(os.getloadavg())
        return len(out)

    return tick


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def fabric_storage_tick(root_pid: int, tree: list[int], rescan_s: float = 5.0) -> Tick:
    """The fabric and storage sources' syscalls with nothing parsed that they do not need:
    each tick the InfiniBand directory, every interface's ``speed`` and ``operstate`` and the
    block ``stat`` of each mount the job uses; every ``rescan_s`` (their default) the root's
    ``mountinfo``, every tree process's open files (``fd`` listed, each link read) and its
    working directory, to find which mounts those are. ``tree``: the pids the tree tick found
    (the storage source reads the process collector's, it does not discover them again)."""
    net = "/sys/class/net"
    state: dict[str, object] = {"scanned": None, "stats": []}
    blocks: dict[str, str] = {}  # major:minor -> stat path, read once like the source does

    def block_stat(majmin: str) -> str | None:
        if not blocks:
            for disk in os.listdir("/sys/block"):
                dev = _read(f"/sys/block/{disk}/dev")
                if dev is not None:
                    blocks[dev.decode().strip()] = f"/sys/block/{disk}/stat"
        return blocks.get(majmin)

    def scan(now: float) -> None:
        info = _read(f"/proc/{root_pid}/mountinfo") or b""
        mounts = {}
        for line in info.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) > 4:
                mounts[parts[4]] = parts[2]  # mount point -> major:minor
        points = sorted(mounts, key=len, reverse=True)
        used: set[str] = set()
        for pid in tree or [root_pid]:
            paths = []
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            with contextlib.suppress(OSError):
                paths.append(os.readlink(f"/proc/{pid}/cwd"))
            for path in paths:
                if path.startswith("/") and not path.startswith("/dev/"):
                    point = next(
                        (p for p in points if p == "/" or path == p or path.startswith(p + "/")),
                        None,
                    )
                    if point is not None:
                        used.add(mounts[point])
        state["stats"] = [s for s in (block_stat(m) for m in sorted(used)) if s]
        state["scanned"] = now

    def tick() -> int:
        now = time.monotonic()
        scanned = state["scanned"]
        if scanned is None or now - float(scanned) >= rescan_s:  # type: ignore[arg-type]
            scan(now)
        out = [_read(path) for path in state["stats"]]  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            os.listdir("/sys/class/infiniband")
        with contextlib.suppress(OSError):
            for name in os.listdir(net):
                if name != "lo":
                    out += [_read(f"{net}/{name}/speed"), _read(f"{net}/{name}/operstate")]
        return len(out)

    return tick


def nvml_tick() -> Tick:
    """Plain nvidia-ml-py calls for every metric the NVML collector records per tick: the same
    driver calls (checked per symbol at the simulated driver, tests/collectors/test_nvml_bare_calls.py)."""
    import pynvml as nv

    from collectors.nvml_field_scalars import SCALAR_GROUPS
    from collectors.nvml_gpm import GPM_METRICS

    nv.nvmlInit()
    handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
    maxima = [
        (
            nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM),
            nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM),
            nv.nvmlDeviceGetMaxPcieLinkGeneration(h),
            nv.nvmlDeviceGetMaxPcieLinkWidth(h),
        )
        for h in handles
    ]
    links = [
        int(nv.nvmlDeviceGetFieldValues(h, [nv.NVML_FI_DEV_NVLINK_LINK_COUNT])[0].value.uiVal)
        for h in handles
    ]
    # The agent's one field request per device: the readings NVML offers as fields (power,
    # energy, PCIe replays, ECC, remapped rows; collectors/nvml_field_scalars.py), the PCIe
    # byte counters, instant power and each link's counters and state.
    scalars = [(s.field_id, 0) for _, group in SCALAR_GROUPS for s in group]
    fields = [
        scalars
        + [
            (nv.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, 0),
            (nv.NVML_FI_DEV_PCIE_COUNT_RX_BYTES, 0),
            (nv.NVML_FI_DEV_POWER_INSTANT, 0),
        ]
        + [
            (f, link)
            for link in range(n)
            for f in (
                nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
            )
        ]
        + [(nv.NVML_FI_DEV_NVLINK_GET_STATE, link) for link in range(n)]
        for n in links
    ]
    samples = [[nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()] for _ in handles]
    for h, pair in zip(handles, samples):
        nv.nvmlGpmSampleGet(h, pair[0])
    request = nv.c_nvmlGpmMetricsGet_t()  # allocated once, as the agent does
    request.version = nv.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(GPM_METRICS)
    for j, (metric_id, _) in enumerate(GPM_METRICS.values()):
        request.metrics[j].metricId = metric_id
    last_seen = [0] * len(handles)
    # The list queries as the agent makes them (collectors/nvml_processes.py): one call into a
    # buffer kept per device, grown and asked again only when the driver says it is too small.
    running = nv._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses_v3")
    sampled = nv._nvmlGetFunctionPointer("nvmlDeviceGetProcessUtilization")
    processes = [(nv.c_nvmlProcessInfo_v3_t * 16)() for _ in handles]
    utilization = [(nv.c_nvmlProcessUtilizationSample_t * 16)() for _ in handles]

    def listed(buffers: list, i: int, ask: Callable) -> list:
        count = ctypes.c_uint(0)
        while True:
            count.value = len(buffers[i])
            ret = ask(count, buffers[i])
            if ret != nv.NVML_ERROR_INSUFFICIENT_SIZE:
                break
            buffers[i] = (buffers[i]._type_ * (count.value * 2 + 5))()
        nv._nvmlCheckReturn(ret)
        return buffers[i][: count.value]

    def tick() -> int:
        out: list = []
        for i, h in enumerate(handles):
            u = nv.nvmlDeviceGetUtilizationRates(h)
            m = nv.nvmlDeviceGetMemoryInfo(h, nv.nvmlMemory_v2)
            out += [
                u.gpu,
                u.memory,
                m.used,
                m.total,
                m.free,
                nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
                nv.nvmlDeviceGetEnforcedPowerLimit(h),
                nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
                *maxima[i],
                nv.nvmlDeviceGetPerformanceState(h),
                nv.nvmlDeviceGetCurrentClocksEventReasons(h),
                nv.nvmlDeviceGetCurrPcieLinkGeneration(h),
                nv.nvmlDeviceGetCurrPcieLinkWidth(h),
            ]
            out += [
                (v.value.ullVal, v.timestamp) for v in nv.nvmlDeviceGetFieldValues(h, fields[i])
            ]
            previous, current = samples[i]
            nv.nvmlGpmSampleGet(h, current)
            request.sample1, request.sample2 = previous, current
            try:  # the first pair can be too close together: an error is data, as in the agent
                nv.nvmlGpmMetricsGet(request)
                out += [request.metrics[j].value for j in range(len(GPM_METRICS))]
            except nv.NVMLError:
                pass
            samples[i] = [current, previous]
            procs = listed(processes, i, lambda c, buf, h=h: running(h, ctypes.byref(c), buf))
            out += [(p.pid, p.usedGpuMemory) for p in procs]
            since = ctypes.c_ulonglong(last_seen[i])
            try:
                util = listed(
                    utilization, i, lambda c, buf, h=h, t=since: sampled(h, buf, ctypes.byref(c), t)
                )
            except nv.NVMLError_NotFound:
                util = []
            for s in util:
                last_seen[i] = max(last_seen[i], s.timeStamp)
                out += [s.pid, s.smUtil, s.memUtil]
        return len(out)

    return tick


def run_calls(args: argparse.Namespace) -> None:
    """NVML work per tick of each side, in this one process on one simulated driver: CPU
    (interleaved, min of ``--rounds`` blocks of 10 ticks) and the calls each makes at the
    driver, per C symbol. Prints JSON: ``{"ms": {side: [...]}, "calls": {side: {symbol: n}}}``.

    agent: ``NvmlCollector.collect`` (no event thread); bare: :func:`nvml_tick`; nvitop:
    ``ResourceMetricCollector.take_snapshots`` on the root (what its daemon runs each
    interval, which also reads the host's CPU, memory and the root's tree)."""
    import json
    import logging

    from agent.source import CollectContext
    from collectors.nvml import NvmlCollector
    from collectors.sim import install, load_scenario
    from collectors.sim.calls import count_calls

    logging.disable(logging.CRITICAL)  # nvitop logs each function the simulator lacks
    clock = [time.time()]
    owners = [args.pid]
    sim = install(load_scenario(args.scenario), clock=lambda: clock[0], job_pids=lambda: owners)
    from nvitop import Device, HostProcess, ResourceMetricCollector

    collector = NvmlCollector(clock=lambda: clock[0], watch_events=False)
    collector.start(CollectContext(root_pid=args.pid, job_pids=lambda: frozenset(owners)))
    root = HostProcess(args.pid)  # held: nvitop keeps its roots weakly (see run_nvitop_monitor)
    nvitop = ResourceMetricCollector(Device.all(), root_pids={args.pid}, interval=args.interval)

    def sides() -> dict[str, Callable[[], object]]:
        return {
            "agent": lambda: collector.collect(clock[0]),
            "bare": nvml_tick(),
            "nvitop": nvitop.take_snapshots,
        }

    def ticks(fn: Callable[[], object], n: int) -> float:
        started = time.process_time()
        for _ in range(n):
            clock[0] += args.interval  # a new driver sample every tick, as at 1 Hz
            fn()
        return (time.process_time() - started) / n * 1000

    timed = sides()
    ms: dict[str, list[float]] = {name: [] for name in timed}
    for fn in timed.values():
        ticks(fn, 3)  # warm up: the first GPM pair, nvitop's caches
    for _ in range(args.rounds):
        for name, fn in timed.items():
            ms[name].append(ticks(fn, 10))
    calls = count_calls(sim)
    counted = sides()  # bound after the counting wrappers are in place
    per_tick: dict[str, dict[str, float]] = {}
    for name, fn in counted.items():
        ticks(fn, 2)
        before = dict(calls)
        ticks(fn, 10)
        per_tick[name] = {
            k: (v - before.get(k, 0)) / 10 for k, v in calls.items() if v > before.get(k, 0)
        }
    del root
    print(json.dumps({"ms": ms, "calls": per_tick}))


def run_bare(args: argparse.Namespace) -> None:
    tree: list[int] = []
    parts: list[Tick] = [
        tree_tick(args.pid, tree),
        host_tick(),
        fabric_storage_tick(args.pid, tree),
    ]
    if args.scenario:
        install_simulator(args.scenario, args.pid)
        parts.append(nvml_tick())
    every(args.interval, lambda: sum(part() for part in parts))


# -- nvitop --------------------------------------------------------------------------------------
def run_nvitop_monitor(args: argparse.Namespace) -> None:
    """nvitop's own headless monitor: ``ResourceMetricCollector`` on the job's root, whose
    daemon thread calls ``take_snapshots()`` every interval (nvitop/api/collector.py)."""
    install_simulator(args.scenario, args.pid)
    from nvitop import Device, HostProcess, ResourceMetricCollector

    # The collector keeps its root in a WeakSet of (per-pid cached) HostProcess objects; with
    # no strong reference the root vanishes at once and nvitop follows no GPU process at all.
    # Holding it makes nvitop do its intended work: the job's GPU processes every interval.
    root = HostProcess(args.pid)
    collector = ResourceMetricCollector(Device.all(), root_pids={args.pid}, interval=args.interval)
    collector.activate(tag="bench")
    while root is not None:
        time.sleep(3600)


def run_nvitop_tui(args: argparse.Namespace) -> None:
    """nvitop's own TUI (``nvitop --interval I``) on the simulated GPUs."""
    install_simulator(args.scenario, args.pid)
    from nvitop.cli import main

    # nvitop logs each NVML function the simulator lacks once, with a traceback, on stderr:
    # keep that off the screen being measured (curses draws on stdout).
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)

    sys.argv = ["nvitop", "--interval", f"{args.interval:g}"]
    sys.exit(main())


def run_scan(args: argparse.Namespace) -> None:
    """The plain scan a post-run report is compared with, on a read-only connection."""
    import duckdb

    con = duckdb.connect(args.db, read_only=True)
    con.execute("SELECT count(*), avg(value) FROM samples").fetchall()
    con.close()


def run_session(args: argparse.Namespace) -> None:
    """The real agent through its public Session, live analysis on or off; writes the seconds
    from start to each rule's first live finding to ``--out`` (JSON) as they come."""
    import json

    from agent.app.job import install_signal_handlers
    from agent.app.session import Session, SessionConfig

    config = SessionConfig(
        db_path=args.db, simulate=args.scenario, live_analysis=args.live == "on", quiet=True
    )
    session = Session(config)
    started = time.time()
    session.attach(args.pid)
    install_signal_handlers(session)
    first: dict[str, float] = {}

    def on_tick() -> None:
        context = session.context
        new = {f["rule"] for f in (context.findings if context else ())} - first.keys()
        if new and args.out:
            first.update(dict.fromkeys(new, time.time() - started))
            Path(args.out).write_text(json.dumps(first))
        if args.health_out and context is not None:  # the live analysis's own counters
            health = {k: v for k, v in context.health.items() if k.startswith("analysis.")}
            Path(args.health_out).write_text(
                json.dumps({"seconds": time.time() - started, **health})
            )

    try:
        session.wait(on_tick=on_tick)
    finally:
        session.finish()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = ("bare", "calls", "nvitop-monitor", "nvitop-tui", "scan", "session")
    parser.add_argument("mode", choices=modes)
    parser.add_argument("--live", choices=("on", "off"), default="on", help="session: analysis")
    parser.add_argument("--out", default=None, help="session: JSON of first findings")
    parser.add_argument("--health-out", default=None, help="session: JSON of analysis.* health")
    parser.add_argument("--pid", type=int, default=None, help="root of the watched tree")
    parser.add_argument("--scenario", default=None, help="simulated NVML scenario")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--db", default=None)
    parser.add_argument("--rounds", type=int, default=5, help="calls: timed blocks per side")
    args = parser.parse_args(argv)
    run = {
        "bare": run_bare,
        "calls": run_calls,
        "nvitop-monitor": run_nvitop_monitor,
        "nvitop-tui": run_nvitop_tui,
        "scan": run_scan,
        "session": run_session,
    }[args.mode]
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is how the benchmark stops it
        run(args)


if __name__ == "__main__":
    main()
