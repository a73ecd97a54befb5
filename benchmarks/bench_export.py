"""Export CPU per sampling interval as a share of sampling CPU (target <= 10%).

Eight simulated H100s (the ``healthy`` scenario) and a job of 32 real processes are sampled
by the real collectors; after every tick the benchmark runs what the exporters run: an OTLP
collection encoded to protobuf, and a Prometheus scrape rendered to text. CPU is the calling
thread's (``time.thread_time``), so both sides are measured the same way in the same run.

    python benchmarks/bench_export.py [--ticks 40] [--otlp-every 60] [--scrape-every 15]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

TARGET = 0.10
GPUS = 8
PROCESSES = 32


def spawn_job(processes: int) -> subprocess.Popen[bytes]:
    """A shell with ``processes - 1`` sleeping children: a process tree of the asked size."""
    script = f"for i in $(seq {processes - 1}); do sleep 600 & done; wait"
    return subprocess.Popen(["sh", "-c", script])


def stop_job(job: subprocess.Popen[bytes]) -> None:
    """Kill the shell and the children it started, each by pid."""
    import psutil

    try:
        children = psutil.Process(job.pid).children(recursive=True)
    except psutil.Error:
        children = []
    for proc in [*children, psutil.Process(job.pid)]:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    job.wait()


def cpu_of(work: Callable[[], object]) -> float:
    started = time.thread_time()
    work()
    return time.thread_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=40)
    parser.add_argument("--interval", type=float, default=1.0, help="sampling interval (s)")
    parser.add_argument(
        "--otlp-every",
        type=float,
        default=60.0,
        help="OTLP export interval (s); the SDK default is 60",
    )
    parser.add_argument(
        "--scrape-every",
        type=float,
        default=15.0,
        help="Prometheus scrape interval (s); 15 is a common setting",
    )
    args = parser.parse_args(argv)

    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from agent.sampler import Sampler
    from agent.snapshot import SnapshotHub
    from agent.source import CollectContext
    from collectors.host import HostCollector
    from collectors.nvml import NvmlCollector
    from collectors.process import ProcessCollector
    from collectors.sim import install, load_scenario
    from exporters.naming import build_plan
    from exporters.otel import instrument_views, register_instruments
    from exporters.prometheus import Exposition
    from exporters.series import SeriesIndex

    job = spawn_job(PROCESSES)
    clock = [time.time()]
    processes = ProcessCollector(job.pid)
    simulator = install(
        load_scenario("healthy"), clock=lambda: clock[0], job_pids=lambda: sorted(processes.pids)
    )
    try:
        time.sleep(0.5)  # let the shell start its children
        ctx = CollectContext(root_pid=job.pid, job_pids=lambda: processes.pids)
        collectors = [processes, HostCollector(), NvmlCollector(clock=lambda: clock[0])]
        for collector in collectors:
            collector.start(ctx)
        hub = SnapshotHub()
        sampler = Sampler(collectors, args.interval, hub=hub, clock=lambda: clock[0])

        plan = build_plan(("otel", "dcgm"))
        index = SeriesIndex(plan, "bench-host")
        # OTLP: what the exporter's reader does, minus the network: SDK collection + encoding
        otlp_reader = InMemoryMetricReader()
        provider = MeterProvider(
            metric_readers=[otlp_reader],
            views=instrument_views(plan),
            exemplar_filter=AlwaysOffExemplarFilter(),
            shutdown_on_exit=False,
        )
        register_instruments(provider.get_meter("accelwatch"), plan, index, lambda: hub.latest)
        exposition = Exposition(plan, {}, {"host.name": "bench-host"})

        def otlp_export() -> int:
            return len(encode_metrics(otlp_reader.get_metrics_data()).SerializeToString())

        def prometheus_scrape() -> int:
            return len(exposition.render(index.points(hub.latest)).encode())

        sampling, otlp, scrape = [], [], []
        points = gpus = procs = 0
        for tick in range(args.ticks + 2):
            clock[0] += args.interval
            sampling.append(cpu_of(sampler.step))
            scrape.append(cpu_of(prometheus_scrape))  # first: it pays for the series index
            otlp.append(cpu_of(otlp_export))
            if tick == 0:
                sampling.clear(), otlp.clear(), scrape.clear()  # warm-up: first rates, caches
        snap = hub.latest
        gpus = len([e for e in snap.entities("nvml") if e.startswith("gpu") and "/" not in e])
        procs = len(snap.entities("process"))
        points = sum(len(b) for b in snap.batches)
        provider.shutdown()
    finally:
        for collector in locals().get("collectors", []):
            collector.close()
        simulator.uninstall()
        stop_job(job)

    sample_cpu = statistics.median(sampling)
    otlp_cpu, scrape_cpu = statistics.median(otlp), statistics.median(scrape)
    print(
        f"setup: {gpus} simulated GPUs, {procs} job processes, {points} samples per tick, "
        f"{len(plan.instruments)} instruments, {args.ticks} ticks"
    )
    print(f"sampling CPU per tick:          {sample_cpu * 1e3:8.2f} ms")
    rows = [
        ("OTLP export every tick", otlp_cpu),
        ("Prometheus scrape every tick", scrape_cpu),
        ("both, every tick (worst case)", otlp_cpu + scrape_cpu),
        (
            f"OTLP every {args.otlp_every:g} s + scrape every {args.scrape_every:g} s",
            otlp_cpu * args.interval / args.otlp_every
            + scrape_cpu * args.interval / args.scrape_every,
        ),
    ]
    for label, cpu in rows:
        ratio = cpu / sample_cpu
        verdict = "PASS" if ratio <= TARGET else "MISS"
        print(f"{label:34s} {cpu * 1e3:8.2f} ms  = {ratio:6.1%} of sampling  {verdict}")
    ratio = rows[-1][1] / sample_cpu
    print(
        f"export CPU per {args.interval:g} s interval at the configured cadence: {ratio:.1%} "
        f"of sampling CPU (target <= {TARGET:.0%}): {'PASS' if ratio <= TARGET else 'MISS'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
