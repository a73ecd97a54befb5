"""Probe: what other span layouts would make of a short recording's bytes (no store change).

Issue 14 wants a 10-minute file at <= 1.5x Parquet zstd. Before changing the schema, this
rewrites an agent-made file's ``sample_spans(series_id, tick, value)`` into candidate layouts,
each in a fresh file of the same block size (a short run's fresh file at close has 32 KiB)
with the same other tables (empty ones skipped, no views), and prints each file's bytes per
value, that its ``(series_id, ts, value)`` rows are exactly the original's (a sum of ``hash``
over all rows), and the median time of one scan of its ``sample_values`` equivalent:

- ``copy``: the spans as they are (what the others are measured against: the same tables);
- ``lists``: a row per run of consecutive ticks of at least ``--min-run`` ticks,
  ``(series_id, first_tick, vals DOUBLE[])``; shorter runs stay in spans;
- ``pos``: ``(series_id, pos, value)`` with ``pos = tick + base`` and ``base`` per series
  (``sample_base``) chosen so that ``pos`` steps by one along the whole table;
- each again without ``bucket_series`` and ``run_heartbeat`` (``-fewer``): two tables a
  close could leave out.

    python benchmarks/probe_span_layouts.py FILE.duckdb [--min-run 64] [--keep DIR]
    python benchmarks/probe_span_layouts.py --record [--ticks 600]   # records one first
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

SMALL = ("bucket_series", "run_heartbeat")
TICKS = "JOIN sample_ticks k"
READ = {
    "copy": f"SELECT p.series_id, k.ts, p.value FROM sample_spans p {TICKS} USING (tick)",
    "lists": (
        "SELECT l.series_id, k.ts, u.value FROM sample_lists l, "
        f"unnest(l.vals) WITH ORDINALITY u(value, i) {TICKS} ON k.tick = l.first_tick + u.i - 1 "
        f"UNION ALL SELECT p.series_id, k.ts, p.value FROM sample_spans p {TICKS} USING (tick)"
    ),
    "pos": (
        "SELECT p.series_id, k.ts, p.value FROM sample_spans p JOIN sample_base b "
        f"USING (series_id) {TICKS} ON k.tick = p.pos - b.base"
    ),
}


def write_spans(con: duckdb.DuckDBPyConnection, layout: str, min_run: int) -> None:
    """``d``'s samples from ``src_spans`` (:func:`source_spans`) in ``layout``, series in
    their stored order."""
    if layout == "copy":
        con.execute("CREATE TABLE d.sample_spans AS SELECT * FROM src_spans ORDER BY rowid")
    elif layout == "lists":
        con.execute(
            "CREATE TEMP TABLE runs AS SELECT *, count(*) OVER (PARTITION BY series_id, grp) AS n "
            "FROM (SELECT rowid AS rid, series_id, tick, value, tick - row_number() OVER "
            "(PARTITION BY series_id ORDER BY tick) AS grp FROM src_spans)"
        )
        con.execute(
            "CREATE TABLE d.sample_lists AS SELECT series_id, min(tick)::INTEGER AS first_tick, "
            f"list(value ORDER BY tick) AS vals FROM runs WHERE n >= {min_run} "
            "GROUP BY series_id, grp ORDER BY min(rid)"
        )
        con.execute(
            "CREATE TABLE d.sample_spans AS SELECT series_id, tick, value FROM runs "
            f"WHERE n < {min_run} ORDER BY rid"
        )
        con.execute("DROP TABLE runs")
    else:
        con.execute(
            "CREATE TEMP TABLE base AS SELECT series_id, rid, coalesce(sum(hi - lo + 1) OVER "
            "(ORDER BY rid ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) - lo AS base "
            "FROM (SELECT series_id, min(tick) lo, max(tick) hi, min(rowid) rid "
            "FROM src_spans GROUP BY 1)"
        )
        con.execute(
            "CREATE TABLE d.sample_base AS SELECT series_id, base::INTEGER AS base FROM base "
            "ORDER BY rid"
        )
        con.execute(
            "CREATE TABLE d.sample_spans AS SELECT p.series_id, (p.tick + b.base)::INTEGER AS "
            "pos, p.value FROM src_spans p JOIN base b USING (series_id) "
            "ORDER BY b.rid, p.tick"
        )
        con.execute("DROP TABLE base")


def source_spans(con: duckdb.DuckDBPyConnection) -> None:
    """``src_spans(series_id, tick, value)``: the source's spans in their stored order, from
    schema 5's table or schema 6's rows (agent.store_span_rows; ``copy`` is then schema 5's
    layout of those rows, not the source's own)."""
    tables = {t for (t,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 's'").fetchall()}  # fmt: skip
    spans = "s.sample_spans"
    if "sample_span_rows" in tables:
        rows = "SELECT series_id, tick, value * scale AS value, 1 AS part, rowid AS rid " \
               "FROM s.sample_span_rows"  # fmt: skip
        if "sample_spans_v5" in tables:  # a file upgraded from schema 5: its old rows first
            rows += " UNION ALL SELECT series_id, tick, value, 0, rowid FROM s.sample_spans_v5"
        spans = f"({rows})"
        con.execute(f"CREATE TEMP TABLE src_spans AS SELECT series_id, tick, value FROM {spans} "
                    "ORDER BY part, rid")  # fmt: skip
        return
    con.execute(f"CREATE TEMP TABLE src_spans AS SELECT * FROM {spans} ORDER BY rowid")


def rewrite(src: Path, dst: Path, layout: str, min_run: int, fewer: bool) -> None:
    """A fresh copy of ``src``, in its block size, with its spans in ``layout`` (``fewer``: without
    the :data:`SMALL` tables)."""
    con = duckdb.connect(config={"threads": 1})  # in parallel, row groups end anywhere: +-1 block
    try:
        con.execute(f"ATTACH '{src}' AS s (READ_ONLY)")
        (block,) = con.execute("SELECT block_size FROM pragma_database_size() WHERE "
                               "database_name = 's'").fetchone() or (32768,)  # fmt: skip
        con.execute(f"ATTACH '{dst}' AS d (BLOCK_SIZE {block})")
        tables = con.execute(
            "SELECT table_name, estimated_size FROM duckdb_tables() WHERE database_name = 's'"
        ).fetchall()
        for table, _ in tables:
            if table in ("sample_spans", "sample_span_rows", "sample_spans_v5") or (
                fewer and table in SMALL
            ):
                continue
            if con.execute(f"SELECT count(*) FROM s.{table}").fetchone() != (0,):
                con.execute(f"CREATE TABLE d.{table} AS SELECT * FROM s.{table}")
        source_spans(con)
        write_spans(con, layout, min_run)
        con.execute("CHECKPOINT d")
    finally:
        con.close()


def scan(path: Path, layout: str, rounds: int = 5) -> tuple[tuple[int, int], float]:
    """(rows, sum of their hashes) and the median seconds of that scan, on one thread."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("SET threads = 1")
        query = f"SELECT count(*), sum(hash(series_id, ts, value)) FROM ({READ[layout]})"
        times, got = [], None
        for _ in range(rounds):
            start = time.perf_counter()
            got = con.execute(query).fetchone()
            times.append(time.perf_counter() - start)
    finally:
        con.close()
    assert got is not None
    return (int(got[0]), int(got[1])), sorted(times)[rounds // 2]


def probe(src: Path, out: Path, min_run: int) -> bool:
    """One line per layout: bytes, bytes per value, the round trip, the scan; False when a
    layout did not give back the original rows."""
    con = duckdb.connect(str(src), read_only=True)
    (values,) = con.execute("SELECT count(*) FROM sample_spans").fetchone() or (0,)
    con.close()
    size = src.stat().st_size
    print(f"{src.name}: {values:,} values in spans; the agent's file {size:,} B = "
          f"{size / values:.3f} B a value")  # fmt: skip
    want = None
    differ = []
    for layout in READ:
        for fewer in (False, True):
            name = layout + ("-fewer" if fewer else "")
            dst = out / f"{src.stem}-{name}.duckdb"
            dst.unlink(missing_ok=True)
            rewrite(src, dst, layout, min_run, fewer)
            rows, seconds = scan(dst, layout)
            want = want or rows
            if rows != want:
                differ.append(name)
            b = dst.stat().st_size
            print(f"  {name:12s} {b:>10,} B  {b / values:.3f} B a value  rows "
                  f"{'equal' if rows == want else 'DIFFER'}  scan {seconds * 1e3:.1f} ms")  # fmt: skip
    if differ:
        print(f"probe failed: {', '.join(differ)} did not give back the original rows",
              file=sys.stderr)  # fmt: skip
    return not differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, help="an agent-made file (closed)")
    parser.add_argument("--record", action="store_true", help="record a shaped file first")
    parser.add_argument("--ticks", type=int, default=600, help="ticks to record (600)")
    parser.add_argument("--min-run", type=int, default=64, help="shortest run stored as a list")
    parser.add_argument("--keep", type=Path, help="write the rewritten files here")
    args = parser.parse_args(argv)
    if not args.record and args.file is None:
        parser.error("give a file or --record")
    with tempfile.TemporaryDirectory() as name:
        out = args.keep or Path(name)
        src = args.file
        if args.record:
            from benchmarks._common import process_tree
            from benchmarks.bench_recording import record

            src = out / "shaped.duckdb"
            src.unlink(missing_ok=True)
            with process_tree(32) as root:
                record(root, src, args.ticks)
        return 0 if probe(src, out, args.min_run) else 1


if __name__ == "__main__":
    sys.exit(main())
