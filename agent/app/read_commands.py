"""Handlers of the commands that read recordings and catalogs (runs, report, view, metrics...).

Reading never needs the recording machinery: nothing here starts a session or a collector.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.app.cli import print_json
from agent.errors import StoreError


def cmd_runs(args: argparse.Namespace) -> int:
    from agent.store import connect

    con = connect(args.db, read_only=True)
    try:
        rows = con.execute(
            "SELECT run_id, name, mode, pid, host, started, ended, status, exit_code, "
            "simulated, scenario, tags FROM runs ORDER BY started"
        ).fetchall()
        cols = [d[0] for d in con.description]
    finally:
        con.close()
    records = [dict(zip(cols, r)) for r in rows]
    if args.json:
        print_json(records)
        return 0
    if not records:
        print(f"no runs in {args.db}")
        return 0
    print(f"{'RUN ID':24} {'NAME':20} {'MODE':6} {'PID':>7} {'STARTED':19} {'STATUS':9} SIM")
    for r in records:
        started = r["started"].strftime("%Y-%m-%d %H:%M:%S") if r["started"] else "-"
        sim = r["scenario"] or "" if r["simulated"] else ""
        print(
            f"{r['run_id']:24} {r['name'][:20]:20} {r['mode']:6} {r['pid'] or '-':>7} "
            f"{started:19} {r['status']:9} {sim}"
        )
    return 0


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
    if not Path(args.db).exists():
        raise StoreError(f"no database at {args.db}")
    from tui.replay import run_replay

    return run_replay(args.db, args.run)
