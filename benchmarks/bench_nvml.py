"""CPU cost of the agent's GPU + process sampling against bare nvidia-ml-py and nvitop.

Eight simulated H100s (healthy training: GPM, 18 NVLinks each) and a real tree of 32
sleeping processes, four of them on each GPU. Each collector advances simulated time by one
interval per tick and is measured with ``time.process_time()`` over many ticks, in turns:

* agent: ``Sampler.step`` with the process-tree and NVML collectors (store writes excluded);
* (a) bare: the same NVML calls written plainly against nvidia-ml-py, plus the same psutil
  reads of the process tree: the floor any Python agent pays;
* (b) nvitop: nvitop's Device API for the same devices and its GpuProcess/HostProcess
  snapshots for the same processes.

On a test clock the simulated driver's event wait polls every few ms, where a real driver
blocks in the kernel, so the XID thread is off in the per-tick figures; its own cost is
measured apart, on the wall clock, while the agent waits between ticks.
Exits 1 if a ratio misses its target.

    python benchmarks/bench_nvml.py [--ticks 150]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import pynvml  # noqa: E402

from agent.sampler import Sampler  # noqa: E402
from agent.source import CollectContext  # noqa: E402
from collectors.nvml import NvmlCollector  # noqa: E402
from collectors.nvml_gpm import GPM_METRICS  # noqa: E402
from collectors.process import ProcessCollector  # noqa: E402
from collectors.sim import install  # noqa: E402
from collectors.sim.scenario import parse_scenario  # noqa: E402

TREE_SIZE = 32
TARGET_BARE = 1.5
TARGET_NVITOP = 0.5

SCENARIO = """
name = "bench-8xh100"
seed = 3
[hardware]
model = "h100-sxm-80gb"
count = 8
[job]
processes_per_gpu = 4
[workload]
busy = 0.97
sm_activity = 0.82
sm_occupancy = 0.42
tensor_activity = 0.55
dram_activity = 0.48
fp16_activity = 0.30
fp32_activity = 0.12
nvlink_tx_gbps = 60.0
nvlink_rx_gbps = 60.0
pcie_tx_gbps = 0.3
pcie_rx_gbps = 1.2
memory_used_gib = 62.0
"""

TREE = f"""
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        for _ in range({TREE_SIZE - 1})]
print("ready", flush=True)
time.sleep(3600)
"""


class FakeClock:
    """Simulated wall time, advanced one interval per tick by the benchmark."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def spawn_tree() -> subprocess.Popen[str]:
    """A root process with TREE_SIZE - 1 sleeping children: the job the agent watches."""
    root = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    assert root.stdout is not None
    if root.stdout.readline().strip() != "ready":
        root.kill()
        raise RuntimeError("the process tree did not start")
    while len(psutil.Process(root.pid).children(recursive=True)) < TREE_SIZE - 1:
        time.sleep(0.05)
    return root


# -- (a) bare nvidia-ml-py + psutil -------------------------------------------------------------
def bare_collector(root_pid: int | None) -> Callable[[], int]:
    """Plain nvidia-ml-py calls for every metric the agent records (and psutil reads of the
    tree rooted at ``root_pid``, if given), values kept in a list."""
    nv = pynvml
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
    fields = [
        [
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
    root = psutil.Process(root_pid) if root_pid is not None else None

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
                nv.nvmlDeviceGetPowerUsage(h),
                nv.nvmlDeviceGetEnforcedPowerLimit(h),
                nv.nvmlDeviceGetTotalEnergyConsumption(h),
                nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
                *maxima[i],
                nv.nvmlDeviceGetPerformanceState(h),
                nv.nvmlDeviceGetCurrentClocksEventReasons(h),
                nv.nvmlDeviceGetCurrPcieLinkGeneration(h),
                nv.nvmlDeviceGetCurrPcieLinkWidth(h),
                nv.nvmlDeviceGetPcieReplayCounter(h),
            ]
            out += [
                nv.nvmlDeviceGetTotalEccErrors(h, err, kind) for err in (0, 1) for kind in (0, 1)
            ]
            out += nv.nvmlDeviceGetRemappedRows(h)
            out += [
                (v.value.ullVal, v.timestamp) for v in nv.nvmlDeviceGetFieldValues(h, fields[i])
            ]
            previous, current = samples[i]
            nv.nvmlGpmSampleGet(h, current)
            request.sample1, request.sample2 = previous, current
            nv.nvmlGpmMetricsGet(request)
            out += [request.metrics[j].value for j in range(len(GPM_METRICS))]
            samples[i] = [current, previous]
            out += [(p.pid, p.usedGpuMemory) for p in nv.nvmlDeviceGetComputeRunningProcesses_v3(h)]
            try:
                util = nv.nvmlDeviceGetProcessUtilization(h, last_seen[i])
            except nv.NVMLError_NotFound:
                util = []
            for s in util:
                last_seen[i] = max(last_seen[i], s.timeStamp)
                out += [s.pid, s.smUtil, s.memUtil]
        for proc in [root, *root.children(recursive=True)] if root is not None else []:
            with proc.oneshot():
                out += [
                    proc.cpu_times(),
                    proc.memory_info(),
                    proc.num_threads(),
                    proc.num_ctx_switches(),
                    proc.status(),
                    proc.io_counters(),
                ]
        return len(out)

    return tick


# -- (b) nvitop ---------------------------------------------------------------------------------
def nvitop_collector(root_pid: int) -> Callable[[], int]:
    from nvitop import Device, GpuProcess, HostProcess

    devices = Device.all()
    root = HostProcess(root_pid)

    def tick() -> int:
        out: list = []
        gpu_processes = []
        for d in devices:
            out += [
                d.utilization_rates(),
                d.memory_info(),
                d.temperature(),
                d.power_usage(),
                d.power_limit(),
                d.clock_infos(),
                d.max_clock_infos(),
                d.performance_state(),
                d.pcie_throughput(),
                d.nvlink_throughput(),
                d.total_volatile_uncorrected_ecc_errors(),
            ]
            gpu_processes.extend(d.processes().values())
        out += GpuProcess.take_snapshots(gpu_processes, failsafe=True)
        out += [HostProcess(p.pid).as_snapshot() for p in [root, *root.children(recursive=True)]]
        return len(out)

    return tick


def measure(
    steps: dict[str, Callable[[float], object]],
    clock: FakeClock,
    ticks: int,
    interval: float,
    rounds: int = 3,
) -> dict[str, float]:
    """Mean process CPU seconds per tick of each collector.

    The collectors take turns in ``rounds`` rounds of ``ticks / rounds`` simulated
    intervals each, so load from other processes on the machine spreads over all of them.
    """
    spent = dict.fromkeys(steps, 0.0)
    per_round = max(1, ticks // rounds)
    for step in steps.values():  # warm caches and first-call paths
        for _ in range(2):
            clock.now += interval
            step(clock.now)
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.process_time()
            for _ in range(per_round):
                clock.now += interval
                step(clock.now)
            spent[name] += time.process_time() - start
    return {name: total / (per_round * rounds) for name, total in spent.items()}


def event_thread_cpu(seconds: float) -> float:
    """CPU seconds per wall second the XID thread costs while the agent waits between ticks.

    Measured on the wall clock, where the simulated event wait blocks like the real one."""
    sim = install(parse_scenario(SCENARIO, "bench"))
    try:
        spent = []
        for watch_events in (False, True):
            collector = NvmlCollector(watch_events=watch_events)
            collector.start(CollectContext())
            start = time.process_time()
            time.sleep(seconds)
            spent.append(time.process_time() - start)
            collector.close()
    finally:
        sim.uninstall()
    return max(0.0, spent[1] - spent[0]) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=150)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)

    tree = spawn_tree()
    clock = FakeClock()
    tree_pids = sorted(p.pid for p in psutil.Process(tree.pid).children(recursive=True))
    sim = install(parse_scenario(SCENARIO, "bench"), clock=clock, job_pids=lambda: tree_pids)
    try:
        processes = ProcessCollector(tree.pid)
        nvml = NvmlCollector(clock=clock, watch_events=False)
        ctx = CollectContext(root_pid=tree.pid, job_pids=lambda: processes.pids)
        processes.start(ctx)
        nvml.start(ctx)  # initializes NVML for every collector below
        sampler = Sampler([processes, nvml], args.interval, clock=clock)
        bare_tick = bare_collector(tree.pid)
        bare_gpu_tick = bare_collector(None)
        nvitop_tick = nvitop_collector(tree.pid)
        cpu = measure(
            {
                "agent": sampler.step,
                "bare": lambda _now: bare_tick(),
                "nvitop": lambda _now: nvitop_tick(),
                "nvml": nvml.collect,
                "bare_gpu": lambda _now: bare_gpu_tick(),
            },
            clock,
            args.ticks,
            args.interval,
        )
        nvml.close()
    finally:
        sim.uninstall()
        for child in psutil.Process(tree.pid).children(recursive=True):
            child.kill()
        tree.kill()
        tree.wait()

    event_thread = event_thread_cpu(2.0)
    agent, nvml_alone = cpu["agent"], cpu["nvml"]
    rows = [
        ("agent (process + nvml collectors)", agent, None, None),
        ("(a) bare nvidia-ml-py + psutil", cpu["bare"], agent / cpu["bare"], TARGET_BARE),
        (
            "(b) nvitop Device + process snapshots",
            cpu["nvitop"],
            agent / cpu["nvitop"],
            TARGET_NVITOP,
        ),
        ("nvml collector alone", nvml_alone, None, None),
        (
            "(a') bare nvidia-ml-py, GPUs only",
            cpu["bare_gpu"],
            nvml_alone / cpu["bare_gpu"],
            TARGET_BARE,
        ),
    ]
    missed = False
    print(f"8 simulated H100 (GPM, 18 NVLinks), {TREE_SIZE}-process tree, {args.ticks} ticks each")
    print(f"{'collector':40} {'CPU ms/tick':>12} {'agent ratio':>12} {'target':>8}  result")
    for name, seconds, ratio, target in rows:
        line = f"{name:40} {seconds * 1000:12.2f}"
        if ratio is not None and target is not None:
            verdict = "PASS" if ratio <= target else "MISS"
            line += f" {ratio:11.2f}x {'<= ' + str(target) + 'x':>8}  {verdict}"
            missed = missed or ratio > target
        print(line)
    print(f"{'XID event thread, idle (CPU ms per second)':40} {event_thread * 1000:12.2f}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
