"""CPU cost of the TPU source per tick against bare gRPC calls for the same metrics.

A simulated v5e-8 (eight devices) is served by ``accelwatch sim serve`` in its own process,
so its CPU is not counted. In interleaved rounds, this process measures with
``time.process_time()`` (all its threads, gRPC's included):

* source: ``TpuCollector.collect`` (every offered metric, the runtime status, values mapped
  onto chips, percentiles, ownership from the job's fds, a columnar batch);
* bare: the same ``GetRuntimeMetric`` / ``GetTpuRuntimeStatus`` calls made one after the
  other on the shipped stubs, reading each value once: the floor any Python client pays.

Both sides run in this one process, in turns (source, bare, source, bare ...), so the load of
the rest of the machine spreads over both; the ratio is taken per round and reported as
min / median / max. Exits 1 on a MISS (median ratio above the target) or if it cannot measure.

    python benchmarks/bench_tpu.py [--rounds 10] [--ticks 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
from tpu_info.proto import tpu_metric_service_pb2 as pb  # noqa: E402
from tpu_info.proto import tpu_metric_service_pb2_grpc as pb_grpc  # noqa: E402

from agent.source import CollectContext  # noqa: E402
from benchmarks._common import Report, fail, ratios, spread  # noqa: E402
from collectors.tpu.collector import TpuCollector  # noqa: E402

TARGET = 1.3
SCENARIO = "tpu-v5e-8-healthy"


def serve(root: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "agent", "sim", "serve", SCENARIO, "--port", "0"]
    proc = subprocess.Popen([*cmd, "--sys-root", str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    env = dict(
        proc.stdout.readline().strip().removeprefix("export ").split("=", 1) for _ in range(5)
    )
    return proc, env


def bare_tick(stub, names: list[str]) -> float:
    total = 0.0
    for name in names:
        resp = stub.GetRuntimeMetric(pb.MetricRequest(metric_name=name), timeout=0.2)
        for m in resp.metric.metrics:
            total += m.gauge.as_double or m.gauge.as_int or m.distribution.count
    status = stub.GetTpuRuntimeStatus(pb.GetTpuRuntimeStatusRequest(), timeout=0.2)
    for summary in status.core_states.values():
        total += len(summary.queued_program_info)
    return total


def per_tick(fn, ticks: int) -> float:
    start = time.process_time()
    for _ in range(ticks):
        fn()
    return (time.process_time() - start) / ticks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds (default 10, at least 3)")
    parser.add_argument("--ticks", type=int, default=20, help="ticks per side and round (20)")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        raise SystemExit("benchmarks need at least 3 rounds (min / median / max)")
    try:
        return _run(args)
    except (OSError, AssertionError, grpc.RpcError, subprocess.SubprocessError) as exc:
        return fail(exc)


def _run(args: argparse.Namespace) -> int:

    with tempfile.TemporaryDirectory(prefix="bench-tpu-") as tmp:
        root = Path(tmp) / "vm"
        proc, env = serve(root)
        try:
            # the benchmark process holds the chips, as a training job would
            held = [open(p) for p in sorted((root / "dev" / "vfio").iterdir())]  # noqa: SIM115
            pid = os.getpid()
            collector = TpuCollector(env={**env, "ACCELWATCH_TPU_PROC_ROOT": "/proc"})
            collector.start(CollectContext(pid, lambda: frozenset([pid])))
            first = collector.collect(time.time())
            assert any(m == "tpu.duty_cycle" for m in first.metrics), "runtime not answering"
            offered = list(collector.client.endpoints[0].offered)
            channel = grpc.secure_channel(
                env["ACCELWATCH_TPU_RUNTIME"], grpc.local_channel_credentials()
            )
            stub = pb_grpc.RuntimeMetricServiceStub(channel)
            bare_tick(stub, offered)

            source_s, bare_s = [], []
            for _ in range(args.rounds):
                source_s.append(per_tick(lambda: collector.collect(time.time()), args.ticks))
                bare_s.append(per_tick(lambda: bare_tick(stub, offered), args.ticks))
            samples = len(collector.collect(time.time()))
            collector.close()
            channel.close()
            for f in held:
                f.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)

    per_round = ratios(source_s, bare_s)
    report = Report(
        f"{SCENARIO}: 8 devices, {len(offered)} runtime metrics + status, {samples} samples/tick;"
        f" CPU per tick over {args.rounds} rounds of {args.ticks} ticks"
    )
    report.side("source", "TpuCollector.collect: calls, mapping, percentiles, ownership, batch")
    report.side("bare", "the same gRPC calls one after the other, each value read once")
    report.info("TPU source, ms per tick", spread([x * 1e3 for x in source_s]))
    report.info("bare gRPC calls, ms per tick", spread([x * 1e3 for x in bare_s]))
    median = statistics.median(per_round)
    report.target("source / bare", spread(per_round), f"<={TARGET}x", median <= TARGET)
    return report.print()


if __name__ == "__main__":
    sys.exit(main())
