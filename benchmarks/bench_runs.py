"""What ``accelwatch runs`` costs with each run's numbers, against one scan of the samples.

A database of ``--runs`` runs (8 GPUs with busy/memory/power/energy, 4 ranks with step time
and count, 1 Hz for ``--seconds``) is written once through the store's writer. Then, in
interleaved rounds, in this process, over one read-only connection:

* listing: ``list_runs(db, stats=True)``: every run with steps, step time, throughput,
  accelerator activity, memory, energy and top finding (what ``runs --json`` computes);
* scan: ``SELECT run_id, metric, count(*), avg(value) FROM samples GROUP BY ALL``: one pass
  over every sample, the least any per-run summary of the samples costs.

Target: the listing costs at most 10x the scan. It is five statements whatever the number of
runs; what it pays beyond the scan is grouping by series (run, source, entity, metric: four
text keys, against the scan's two) and ordering each energy counter's samples to make its
increase reset-safe. Exits 1 on a MISS.

    python benchmarks/bench_runs.py [--rounds 5] [--runs 100] [--seconds 600] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._common import Report, fail, ratios, spread  # noqa: E402

TARGET_RATIO = 10.0
GPUS, RANKS = 8, 4


def _columns(t0: float, seconds: int) -> dict[str, np.ndarray]:
    ts = (t0 + np.arange(1, seconds + 1)) * 1e6
    parts = []
    for g in range(GPUS):
        for metric, value in (
            ("gpu.utilization", np.full(seconds, 0.9)),
            ("gpu.memory.used", np.full(seconds, 40 * 2**30)),
            ("gpu.power", np.full(seconds, 300.0)),
            ("gpu.energy", 300.0 * np.arange(1, seconds + 1)),
        ):
            parts.append(("nvml", f"gpu{g}", metric, value))
    for r in range(RANKS):
        parts.append(("steps", f"rank{r}", "step.time", np.full(seconds, 0.1)))
        parts.append(("steps", f"rank{r}", "step.count", 10.0 * np.arange(1, seconds + 1)))
    n = seconds * len(parts)
    return {
        "ts": np.tile(ts.astype("int64"), len(parts)).astype("datetime64[us]"),
        "source": np.repeat(np.array([p[0] for p in parts], dtype=object), seconds),
        "entity": np.repeat(np.array([p[1] for p in parts], dtype=object), seconds),
        "metric": np.repeat(np.array([p[2] for p in parts], dtype=object), seconds),
        "value": np.concatenate([p[3] for p in parts]).astype(np.float64)[:n],
    }


def build(path: Path, runs: int, seconds: int) -> int:
    from agent.experiments.merge import tick_batches
    from agent.model import RunInfo
    from agent.store import Store

    store = Store(path)
    rows = 0
    try:
        for i in range(runs):
            t0 = 1.7e9 + i * (seconds + 10)
            store.write_run(
                RunInfo(
                    run_id=f"run-{i}", name=f"train-{i}", pid=1, cmdline=["python"], cwd="/",
                    host="h", started=t0, interval=1.0, db_path=str(path), mode="run",
                    ended=t0 + seconds, exit_code=0, status="finished",
                )
            )  # fmt: skip
            cols = _columns(t0, seconds)
            order = np.lexsort((cols["source"].astype(str), cols["ts"]))
            batches = tick_batches({k: v[order] for k, v in cols.items()})
            rows += store.write_ticks([(f"run-{i}", batches)])
    finally:
        store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 20 runs of 300 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.runs, args.seconds = 3, 20, 300
    if args.rounds < 3:
        raise SystemExit("benchmarks need at least 3 rounds (min / median / max)")
    try:
        return _run(args)
    except Exception as exc:
        return fail(exc)


def _run(args: argparse.Namespace) -> int:
    from agent.analysis.engine import post_run_resources
    from agent.runs import list_runs, open_read

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runs.duckdb"
        rows = build(path, args.runs, args.seconds)
        db = open_read(path)
        try:
            listing, scan = [], []
            scan_sql = "SELECT run_id, metric, count(*), avg(value) FROM samples GROUP BY ALL"
            for _ in range(args.rounds):
                start = time.perf_counter()
                listed = list_runs(db, stats=True)
                listing.append(time.perf_counter() - start)
                assert db.duckdb is not None
                with post_run_resources(db.duckdb):  # the resources the listing gets
                    start = time.perf_counter()
                    db.execute(scan_sql)
                    scan.append(time.perf_counter() - start)
            if len(listed) != args.runs or any(r["steps"] != 10 * args.seconds for r in listed):
                raise RuntimeError("the listing did not count every run's steps")
        finally:
            db.close()
    report = Report(f"accelwatch runs: {args.runs} runs, {rows:,} samples, {args.rounds} rounds")
    report.side("listing", "list_runs(stats=True): runs rows, one statement of samples "
                "aggregates (steps, step time, busy, memory, energy), one of findings")  # fmt: skip
    report.side("scan", "one GROUP BY run_id, metric over every sample (count, avg); both "
                "sides with DuckDB's default threads and memory, as a post-run analysis")  # fmt: skip
    report.info("listing, ms", spread([s * 1e3 for s in listing], "{:.0f}"))
    report.info("scan, ms", spread([s * 1e3 for s in scan], "{:.0f}"))
    ratio = ratios(listing, scan)
    report.target(
        "listing / scan", spread(ratio), f"<= {TARGET_RATIO:g}x",
        statistics.median(ratio) <= TARGET_RATIO,
    )  # fmt: skip
    return report.print()


if __name__ == "__main__":
    sys.exit(main())
