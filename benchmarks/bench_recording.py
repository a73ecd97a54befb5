"""Recording-core benchmark: sampling cost, memory over time, DuckDB ingest.

Prints, in one run:
  1. agent CPU per tick (32-process tree + host) / a bare loop doing the same psutil reads
     (target <= 1.5x);
  2. the agent's peak RSS over 600 ticks of headless sampling, the data volume of 10 minutes
     at 1 Hz (target <= 100 MB; ``--real`` samples 10 real minutes at 1 Hz instead);
  3. store ingest rate / one bulk ``CREATE TABLE AS`` of the same Arrow data (target >= 0.3x),
     and bytes per stored value.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import psutil
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.model import BatchBuilder  # noqa: E402
from agent.sampler import Sampler  # noqa: E402
from agent.source import CollectContext  # noqa: E402
from agent.store import Store  # noqa: E402
from benchmarks._common import cpu_per_call, print_table, process_tree, verdict  # noqa: E402
from collectors.host import HostCollector  # noqa: E402
from collectors.process import ProcessCollector  # noqa: E402


def bare_psutil_tick(root: psutil.Process) -> None:
    """The same reads the agent makes, with nothing around them."""
    for p in [root, *root.children(recursive=True)]:
        try:
            with p.oneshot():
                p.cpu_times()
                p.memory_info()
                p.num_threads()
                p.num_ctx_switches()
                p.status()
                p.io_counters()
        except psutil.Error:
            pass
    psutil.cpu_times()
    psutil.cpu_times(percpu=True)
    psutil.virtual_memory()
    psutil.swap_memory()
    os.getloadavg()
    psutil.disk_io_counters(perdisk=True)
    psutil.net_io_counters(pernic=True)


def bench_tick_cost(root_pid: int, ticks: int) -> tuple[float, float]:
    root = psutil.Process(root_pid)
    bare = cpu_per_call(lambda: bare_psutil_tick(root), ticks)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        store.start()
        procs = ProcessCollector(root_pid)
        collectors = [procs, HostCollector()]
        ctx = CollectContext(root_pid=root_pid, job_pids=lambda: procs.pids)
        for c in collectors:
            c.start(ctx)
        sampler = Sampler(collectors, 1.0, sinks=[lambda now, b: store.submit("bench", b)])
        clock = iter(range(10**9))
        agent = cpu_per_call(lambda: sampler.step(float(next(clock))), ticks)
        store.close()  # the writer thread's CPU is included: same process
    return bare, agent


def bench_rss(root_pid: int, real: bool) -> tuple[float, float]:
    interval, duration = (1.0, 600.0) if real else (0.05, 30.0)
    with tempfile.TemporaryDirectory() as tmp:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "attach",
                str(root_pid),
                "--headless",
                "--db",
                str(Path(tmp) / "rss.duckdb"),
                "--interval",
                str(interval),
                "--duration",
                str(duration),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = psutil.Process(agent.pid)
        peak_rss = peak_uss = 0
        while agent.poll() is None:
            try:
                mem = proc.memory_full_info()
            except psutil.Error:
                break
            peak_rss, peak_uss = max(peak_rss, mem.rss), max(peak_uss, mem.uss)
            time.sleep(0.2)
    return peak_rss / 1e6, peak_uss / 1e6


def synthetic_ticks(n_ticks: int, values_per_tick: int):
    entities = [f"gpu{i % 8}" if i % 3 else str(1000 + i % 32) for i in range(values_per_tick)]
    metrics = [f"gpu.metric{i % 40}" for i in range(values_per_tick)]
    for t in range(n_ticks):
        b = BatchBuilder("nvml", 1_700_000_000.0 + t)
        for i, (e, m) in enumerate(zip(entities, metrics)):
            b.add(e, m, float((t * 7 + i) % 1000) / 10)
        yield b.build()


def bench_ingest(n_ticks: int, values_per_tick: int, ticks_per_flush: int):
    batches = list(synthetic_ticks(n_ticks, values_per_tick))
    rows = n_ticks * values_per_tick
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "ingest.duckdb")
        start = time.perf_counter()
        for i in range(0, n_ticks, ticks_per_flush):
            store.write_ticks([("bench", batches[i : i + ticks_per_flush])])
        ours = time.perf_counter() - start  # includes building the columns of each tick
        store.con.execute("CHECKPOINT")
        store.close()
        size = os.path.getsize(Path(tmp) / "ingest.duckdb")
        all_rows = pa.concat_tables(  # noqa: F841 - the same data, as one Arrow table
            [pa.table(b.to_columns()) for b in batches]
        )
        con = duckdb.connect(str(Path(tmp) / "bulk.duckdb"))
        start = time.perf_counter()
        con.execute("CREATE TABLE bulk AS SELECT 'bench' AS run_id, * FROM all_rows")
        bulk = time.perf_counter() - start
        con.close()
    return rows / ours, rows / bulk, size / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--real", action="store_true", help="RSS over 10 real minutes at 1 Hz")
    args = parser.parse_args()
    with process_tree(32) as root_pid:
        bare, agent = bench_tick_cost(root_pid, args.ticks)
        rss_mb, uss_mb = bench_rss(root_pid, args.real)
    ratio = agent / bare
    ingest = {k: bench_ingest(600, 1000, k) for k in (1, 10)}
    bytes_per_value = ingest[1][2]
    print_table(
        "accelwatch recording core",
        [
            ("bare psutil loop, CPU ms per tick (32 procs + host)", f"{bare * 1e3:.2f}", "", ""),
            ("agent, CPU ms per tick (incl. batching + store)", f"{agent * 1e3:.2f}", "", ""),
            ("agent / bare psutil", f"{ratio:.2f}x", "<= 1.5x", verdict(ratio <= 1.5)),
            (
                "agent peak RSS, 600 ticks headless (MB)",
                f"{rss_mb:.0f}",
                "<= 100",
                verdict(rss_mb <= 100),
            ),
            ("  of which private (USS; the rest is shared library code)", f"{uss_mb:.0f}", "", ""),
            *[
                row
                for k, (ours, bulk, _) in ingest.items()
                for row in (
                    (
                        f"store ingest, {k} tick(s) of 1000 values per flush (rows/s)",
                        f"{ours:,.0f}",
                        "",
                        "",
                    ),
                    ("  bulk CREATE TABLE AS of the same data (rows/s)", f"{bulk:,.0f}", "", ""),
                    (
                        "  ingest / bulk",
                        f"{ours / bulk:.2f}x",
                        ">= 0.3x",
                        verdict(ours / bulk >= 0.3),
                    ),
                )
            ],
            ("bytes per stored value (after checkpoint)", f"{bytes_per_value:.2f}", "", ""),
        ],
    )


if __name__ == "__main__":
    main()
