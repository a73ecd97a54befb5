"""Handlers of the commands that read recordings and catalogs (runs, report, view, metrics...).

Reading never needs the recording machinery: nothing here starts a session or a collector.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.app.cli import print_json
from agent.errors import StoreError, UsageError


def display_width(text: str) -> int:
    """Terminal columns of ``text``: East Asian wide and fullwidth characters take two."""
    import unicodedata

    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def fit(text: str, width: int) -> str:
    """``text`` cut and padded to exactly ``width`` terminal columns."""
    out, used = [], 0
    for ch in text:
        w = display_width(ch)
        if used + w > width:
            break
        out.append(ch)
        used += w
    return "".join(out) + " " * (width - used)


def cmd_sql(args: argparse.Namespace) -> int:
    """``accelwatch sql "SELECT ..." [--json|--csv]``: one read statement, also while recording."""
    from agent.readserver import QueryRefused, check_read_only
    from agent.runs import open_read

    try:
        statement = check_read_only(args.query)
    except QueryRefused as exc:
        raise UsageError(f"sql: {exc}") from None
    db = open_read(args.db)
    try:
        try:
            result = db.execute(statement)
        except UsageError:
            raise
        except Exception as exc:  # a DuckDB error in the user's query: one line
            raise UsageError(f"sql: {str(exc).strip().splitlines()[0]}") from None
    finally:
        db.close()
    if args.json:
        print_json(result.records())
    elif args.csv:
        import csv
        import sys

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        _print_table(result.columns, result.rows)
    return 0


def _print_table(columns, rows) -> None:
    cells = [[("NULL" if v is None else str(v)) for v in r] for r in rows]
    widths = [
        max([display_width(c), *(display_width(r[i]) for r in cells)])
        for i, c in enumerate(columns)
    ]
    print("  ".join(fit(c, w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        print("  ".join(fit(v, w) for v, w in zip(r, widths)).rstrip())


def cmd_metrics(args: argparse.Namespace) -> int:
    from agent.catalog import CATALOG

    rows = [
        {
            "name": m.name,
            "unit": m.unit,
            "kind": m.kind,
            "source": m.source,
            "otel_name": m.otel_name,
            "dcgm_name": m.dcgm_name,
            "description": m.description,
        }
        for m in CATALOG
    ]
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        print(f"{r['name']:36} {r['unit']:10} {r['kind']:8} {r['source']:8} {r['description']}")
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from collectors.sim import list_scenarios

    infos = list_scenarios()
    if args.json:
        print_json([asdict(i) for i in infos])
        return 0
    for i in infos:
        print(f"{i.name:20} {i.hardware:24} {i.summary}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from agent.report import cmd_report as report

    return report(args)


def cmd_view(args: argparse.Namespace) -> int:
    from agent.runs import expand_db_specs

    paths = expand_db_specs(args.db)  # a glob matching nothing: one line, exit 4
    if len(paths) == 1 and not Path(paths[0]).exists():
        raise StoreError(f"no database at {paths[0]}")
    from tui.replay import run_replay

    return run_replay(paths[0] if len(paths) == 1 else paths, args.run)  # type: ignore[arg-type]
