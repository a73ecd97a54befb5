"""``accelwatch import FILE... --run NAME``: another tool's step or op trace as a run."""

from __future__ import annotations

import argparse

from agent.app.cli import print_json


def cmd_import(args: argparse.Namespace) -> int:
    """Import, analyse, and say in one line what was read and found."""
    from agent.analysis.steps import import_trace
    from agent.analysis.time_axis import TimeAxis

    result = import_trace(
        args.db,
        args.files,
        run=args.run,
        overrides={
            "rank": args.rank_col,
            "time": args.time_col,
            "duration": args.duration_col,
            "step": args.step_col,
        },
        scale=args.scale,
        time_unit=args.time_unit,
    )
    trace = result.trace
    if args.json:
        print_json(
            {
                "run": result.run_id,
                "name": result.name,
                "columns": trace.columns.described(),
                "ranks": trace.ranks,
                "step_times": trace.steps,
                "ops": trace.ops,
                "samples": result.samples,
                "added_to_recording": result.added_to_recording,
                "time_axis": "absolute" if trace.axis.absolute else "trace",
                "findings": [f.to_dict() for f in result.findings],
            }
        )
        return 0
    axis = TimeAxis(0.0, trace=True)
    span = (
        f"{trace.axis.last - trace.axis.first:,.0f} s"
        if trace.axis.absolute
        else f"{axis.range_text(trace.axis.first, trace.axis.last)}"
    )
    what = f"{trace.steps} step times of {trace.ranks} ranks"
    if trace.ops:
        what += f" and {trace.ops} ops"
    into = "added to recorded run" if result.added_to_recording else "as run"
    print(
        f"imported {what} ({span}; {trace.columns.described()}) {into} "
        f"{result.name} ({result.run_id}) in {args.db}: {len(result.findings)} finding(s); "
        f"see `accelwatch report {result.name} --db {args.db}`"
    )
    return 0
