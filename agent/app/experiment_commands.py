"""Handlers of the experiment commands: ``runs`` (with each run's numbers), ``compare``,
``export`` and ``merge``. They read through :mod:`agent.runs` (one file, several, or a glob)
and never write into a database they read."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.app.cli import print_json
from agent.app.read_commands import fit


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def duration_text(seconds: float | None) -> str:
    from agent.analysis.rules.common import duration

    return "-" if seconds is None else duration(seconds)


def cmd_runs(args: argparse.Namespace) -> int:
    """``accelwatch runs [--db PATH|GLOB]... [--tag K=V]... [--name PATTERN] [--json]``."""
    from agent.experiments.compare import energy_text
    from agent.runs import db_label, list_runs, open_read, typed

    db = open_read(args.db)
    try:
        records = list_runs(db, name=args.name, tags=args.tag, stats=True)
    finally:
        db.close()
    if args.json:
        print_json(typed(records))
        return 0
    if not records:
        what = " matching" if args.name or args.tag else ""
        print(f"no{what} runs in {db_label(args.db)}")
        return 0
    wide = max(24, *(len(r["run_id"]) for r in records))
    mode_w = max(6, *(len(r["mode"] or "-") for r in records))
    head = [
        f"{'RUN ID':{wide}}", fit("NAME", 20), f"{'MODE':{mode_w}}", f"{'STATUS':9}", f"{'STARTED':16}",
        f"{'DURATION':>8}", f"{'STEPS':>7}", f"{'STEP':>8}", f"{'STEPS/S':>8}", f"{'ACCEL':>5}",
        f"{'ENERGY':>9}", fit("TOP FINDING", 22), "TAGS",
    ]  # fmt: skip
    print(" ".join(head))
    for r in records:
        started = r["started"].strftime("%Y-%m-%d %H:%M") if r["started"] else "-"
        top = r["top_finding"]
        note = ""
        if r["status"] == "lost" and r.get("last_sample"):
            note = f" (last sample {r['last_sample']:%H:%M:%S} UTC)"
        elif r["simulated"]:
            note = f" (simulated {r['scenario'] or ''})".replace(" )", ")")
        tags = ",".join(f"{k}={v}" for k, v in r["tags"].items())
        cells = [
            f"{r['run_id']:{wide}}", fit(r["name"] or "", 20), f"{r['mode'] or '-':{mode_w}}",
            f"{r['status']:9}", f"{started:16}", f"{duration_text(r['duration_s']):>8}",
            f"{_num(r['steps'], 'd'):>7}", f"{_num(r['step_time_mean_s'], '.3g', ' s'):>8}",
            f"{_num(r['throughput_steps_s'], '.3g'):>8}",
            f"{_num(None if r['accel_busy_mean'] is None else r['accel_busy_mean'] * 100, '.0f', '%'):>5}",
            f"{energy_text(r['energy_j']):>9}", fit(top["rule"] if top else "-", 22),
            tags + note,
        ]  # fmt: skip
        print(" ".join(cells).rstrip())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``accelwatch compare RUN_A RUN_B [--db PATH|GLOB]... [--json]``."""
    from agent.experiments.compare import compare_runs, render_comparison
    from agent.runs import open_read, typed

    db = open_read(args.db)
    try:
        comparison = compare_runs(db, args.run_a, args.run_b, args.db)
    finally:
        db.close()
    if args.json:
        print_json(typed(comparison))
    else:
        sys.stdout.write(render_comparison(comparison))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``accelwatch export RUN... --format parquet|csv --out DIR [--db PATH|GLOB]...``."""
    from agent.experiments.export import export_runs
    from agent.runs import open_read

    db = open_read(args.db)
    try:
        run_ids, written = export_runs(
            db, args.runs, args.out, fmt=args.format, overwrite=args.overwrite, db_spec=args.db
        )
    finally:
        db.close()
    files = sum(w["files"] for w in written.values())
    rows = sum(w["rows"] for w in written.values())
    print(
        f"exported {len(run_ids)} run(s) to {args.out}: {rows} rows in {files} "
        f"{args.format} files ({', '.join(t for t, w in written.items() if w['rows'])})",
        file=sys.stderr,
    )
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """``accelwatch merge DB... --into DB``."""
    from agent.experiments.merge import merge_databases

    result: dict[str, Any] = merge_databases(args.inputs, args.into)
    for line in result["lines"]:
        print(line, file=sys.stderr)
    if args.json:
        print_json(result["runs"])
    return 0
