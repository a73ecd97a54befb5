"""Recording core: the whole agent vs a bare psutil loop, bytes per value, ingest vs bulk load.

Prints, in one run:
  1. CPU and memory of the whole headless agent process (``accelwatch attach ROOT --headless``
     on a real 32-process tree, no GPUs) against a bare loop of the same psutil reads of the
     same tree and host, at the same interval, both child processes measured with ``psutil``
     (user + system of all threads) in interleaved rounds. Targets: <= 1.25x, RSS <= 80 MB.
  2. bytes per stored value of a 10-minute-shaped recording (600 ticks of 8 simulated H100s,
     the host and the tree, recorded by the real agent at 0.1 s) against Parquet zstd of the
     same samples (DuckDB ``COPY ... (FORMAT parquet, COMPRESSION zstd)``). Target <= 1.5x.
  3. ingest of those samples at the agent's flush (one tick per ``write_ticks``, timer
     stopped after ``close()``, which checkpoints) against one bulk ``CREATE TABLE AS`` from
     Arrow, both timed to a checkpointed file. Targets: >= 0.5x bulk, writer <= 1 us per value.

Exits 1 on a MISS.

    python benchmarks/bench_recording.py [--rounds 5] [--window 10] [--ticks 600] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

from benchmarks._common import (  # noqa: E402
    ROOT,
    BenchmarkError,
    Report,
    Side,
    add_round_args,
    agent_argv,
    apply_quick,
    baseline_argv,
    fail,
    interleaved,
    process_tree,
    ratios,
    spread,
)

TARGET_RATIO = 1.25
TARGET_RSS_MB = 80.0
TARGET_BYTES = 1.5
TARGET_INGEST = 0.5
TARGET_WRITER_US = 1.0
FAST_INTERVAL = 0.1


def cpu_sides(root: int, db: Path) -> list[Side]:
    return [
        Side(
            "agent",
            agent_argv("attach", str(root), "--headless", "--db", str(db)),
            "the whole headless agent process (all threads), no GPUs: process + host "
            "collectors, store writer, live analysis, headless line",
        ),
        Side(
            "bare",
            baseline_argv("bare", "--pid", str(root)),
            "one loop: psutil reads of the same tree (oneshot: cpu, memory, threads, "
            "ctx switches, status, io) + the host collector's reads",
        ),
    ]


def record(root: int, db: Path, ticks: int) -> None:
    """A real recording of ``ticks`` ticks: the agent, 8 simulated H100s, at 0.1 s."""
    argv = agent_argv(
        "attach", str(root), "--headless", "--simulate", "healthy", "--db", str(db),
        "--interval", f"{FAST_INTERVAL:g}", "--duration", f"{ticks * FAST_INTERVAL:g}",
    )  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=ticks + 60)
    if done.returncode != 0:
        raise BenchmarkError(f"the recording failed ({done.returncode}): {done.stderr[-2000:]}")


def bytes_per_value(db: Path, tmp: Path) -> tuple[int, int, float, float]:
    """(values, ticks, bytes per value in the agent's file, in Parquet zstd of the same)."""
    parquet = tmp / "samples.parquet"
    con = duckdb.connect(str(db), read_only=True)
    try:
        values, ticks = con.execute("SELECT count(*), count(DISTINCT ts) FROM samples").fetchone()
        con.execute(
            f"COPY (SELECT * FROM samples ORDER BY ts) TO '{parquet}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
    finally:
        con.close()
    if not values:
        raise BenchmarkError("the recording stored no samples")
    return values, ticks, db.stat().st_size / values, parquet.stat().st_size / values


@dataclass
class Ingest:
    """Values per second of each way of loading the same samples, per round."""

    flush: list[float] = field(default_factory=list)
    bulk: list[float] = field(default_factory=list)
    one_write: list[float] = field(default_factory=list)
    writer_us: list[float] = field(default_factory=list)
    per_flush_ms: list[float] = field(default_factory=list)


def ingest(db: Path, tmp: Path, rounds: int) -> Ingest:
    """The same samples loaded three ways, interleaved over ``rounds``: the agent's flush (one
    tick per ``write_ticks``, then ``close()``, which checkpoints), the same writer given every
    tick in one ``write_ticks`` (what the per-flush cost is measured against), and a bulk
    ``CREATE TABLE AS`` from Arrow + ``CHECKPOINT`` (DuckDB's fastest load)."""
    import pyarrow as pa

    from agent.model import BatchBuilder
    from agent.store import Store

    con = duckdb.connect(str(db), read_only=True)
    try:
        table = con.sql(
            "SELECT epoch(ts) AS t, source, entity, metric, value FROM samples ORDER BY ts"
        ).to_arrow_table()
    finally:
        con.close()
    rows = table.to_pylist()
    ticks: dict[float, dict[str, BatchBuilder]] = {}
    for row in rows:  # the batches the sampler hands the writer, built outside the timer
        builders = ticks.setdefault(row["t"], {})
        builder = builders.get(row["source"])
        if builder is None:
            builder = builders[row["source"]] = BatchBuilder(row["source"], row["t"])
        builder.add(row["entity"], row["metric"], row["value"])
    batches = [[b.build() for b in builders.values()] for builders in ticks.values()]
    arrow = pa.Table.from_pylist(rows)  # noqa: F841 - read by DuckDB's replacement scan
    n = len(rows)
    got = Ingest()
    for r in range(rounds):
        store = Store(tmp / f"flush-{r}.duckdb")
        wall, cpu = time.perf_counter(), time.process_time()
        for tick in batches:
            store.write_ticks([("bench", tick)])
        store.close()  # checkpoints: part of the writer's work
        flush_wall, flush_cpu = time.perf_counter() - wall, time.process_time() - cpu

        store = Store(tmp / f"one-{r}.duckdb")
        wall, cpu = time.perf_counter(), time.process_time()
        store.write_ticks([("bench", b) for b in batches])
        store.close()
        one_wall, one_cpu = time.perf_counter() - wall, time.process_time() - cpu

        wall = time.perf_counter()
        bulk = duckdb.connect(str(tmp / f"bulk-{r}.duckdb"))
        bulk.execute("CREATE TABLE samples AS SELECT 'bench' AS run_id, * FROM arrow")
        bulk.execute("CHECKPOINT")
        bulk.close()
        bulk_wall = time.perf_counter() - wall
        got.flush.append(n / flush_wall)
        got.one_write.append(n / one_wall)
        got.bulk.append(n / bulk_wall)
        got.writer_us.append(flush_cpu / n * 1e6)
        got.per_flush_ms.append((flush_cpu - one_cpu) / max(1, len(batches) - 1) * 1e3)
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_round_args(parser, rounds=5, window=10.0, warmup=6.0)
    parser.add_argument("--ticks", type=int, default=600, help="ticks of the shaped recording")
    args = parser.parse_args(argv)
    apply_quick(args, window=3.0, warmup=4.0)
    if args.quick:
        args.ticks = 150
    report = Report(
        f"recording core: 32-process tree, {args.rounds} interleaved rounds of {args.window:g} s"
    )
    try:
        with tempfile.TemporaryDirectory() as name, process_tree(32) as root:
            tmp = Path(name)
            sides = cpu_sides(root, tmp / "cpu.duckdb")
            got = interleaved(sides, rounds=args.rounds, window=args.window, warmup=args.warmup)
            record(root, tmp / "shaped.duckdb", args.ticks)
            values, ticks, ours, parquet = bytes_per_value(tmp / "shaped.duckdb", tmp)
            fed = ingest(tmp / "shaped.duckdb", tmp, args.rounds)
    except Exception as exc:  # one line and exit 1, never a traceback mid-table
        return fail(exc)
    for side in sides:
        report.side(side.name, side.includes)
    report.side(
        "bytes",
        f"the agent's DuckDB file after it finished / Parquet zstd of its samples view "
        f"({ticks} ticks, {values:,} values)",
    )
    report.side(
        "ingest",
        "Store.write_ticks one tick per call + close() (checkpoint) / one CREATE TABLE AS "
        "from Arrow + CHECKPOINT, same samples, same process, interleaved rounds; beside "
        "them the same writer given every tick in one write_ticks",
    )
    agent, bare = got["agent"], got["bare"]
    report.info("agent: CPU, % of one core", spread([c * 100 for c in agent.cpu]))
    report.info("bare: CPU, % of one core", spread([c * 100 for c in bare.cpu]))
    per_round = ratios(agent.cpu, bare.cpu)
    report.target(
        "agent / bare psutil loop (per round)",
        spread(per_round),
        f"<= {TARGET_RATIO}x",
        statistics.median(per_round) <= TARGET_RATIO,
    )
    rss = [s.rss_mb for s in agent.slots]
    report.target(
        "agent RSS, no GPUs (MB)", spread(rss, "{:.0f}"), f"<= {TARGET_RSS_MB:.0f}",
        max(rss) <= TARGET_RSS_MB,
    )  # fmt: skip
    report.info("agent USS (MB)", spread([s.uss_mb for s in agent.slots], "{:.0f}"))
    report.info("bytes per value: agent file", f"{ours:.2f}")
    report.info("bytes per value: Parquet zstd", f"{parquet:.2f}")
    report.target(
        "bytes per value: agent / Parquet zstd", f"{ours / parquet:.2f}x", f"<= {TARGET_BYTES}x",
        ours / parquet <= TARGET_BYTES,
    )  # fmt: skip
    report.info("ingest at the agent's flush (values/s)", spread(fed.flush, "{:,.0f}"))
    report.info("the same writer, every tick in one write (values/s)",
                spread(fed.one_write, "{:,.0f}"))  # fmt: skip
    report.info("bulk CREATE TABLE AS (values/s)", spread(fed.bulk, "{:,.0f}"))
    per_round = ratios(fed.flush, fed.bulk)
    report.target(
        "ingest: agent flush / bulk (per round)", spread(per_round), f">= {TARGET_INGEST}x",
        statistics.median(per_round) >= TARGET_INGEST,
    )  # fmt: skip
    report.target(
        "writer CPU per value (us)", spread(fed.writer_us), f"<= {TARGET_WRITER_US:g}",
        statistics.median(fed.writer_us) <= TARGET_WRITER_US,
    )  # fmt: skip
    report.info("writer CPU per flush beyond one write (ms)", spread(fed.per_flush_ms))
    return report.print()


if __name__ == "__main__":
    sys.exit(main())
