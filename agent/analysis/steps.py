"""Per-rank step times: import a CSV of step timings into a run as the ``steps`` source.

A training job may log one row per rank and step (or per sampling period): the rank, the time
since the run started, and the step time. ``import_step_times`` turns such a file into
``step.time`` samples (entity ``rank0``, ``rank1``...), so the straggler and hang rules use
real step times instead of device signals::

    python -m agent.analysis.steps steps.csv --db runs.duckdb --run RUN \\
        --rank-col worker --time-col time --value-col batch_time_norm --scale 0.001
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from agent.analysis.engine import find_run
from agent.catalog.steps import SOURCE, rank_entity
from agent.errors import AccelwatchError, UsageError
from agent.model import Batch, RunInfo
from agent.store import Store


class StepImportError(AccelwatchError):
    """The step-time file cannot be read or does not match the run."""


@dataclass(frozen=True)
class StepColumns:
    rank: str = "rank"
    time: str = "time"
    value: str = "step_time"


def read_step_csv(
    path: str | os.PathLike[str], columns: StepColumns = StepColumns(), scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seconds since start, rank, step time in s) columns of a CSV, sorted by time."""
    if not Path(path).is_file():
        raise StepImportError(f"no step-time file at {path}")
    con = duckdb.connect()
    try:
        rel = con.sql(
            f'SELECT CAST("{columns.time}" AS DOUBLE) AS t, CAST("{columns.rank}" AS VARCHAR) '
            f'AS rank, CAST("{columns.value}" AS DOUBLE) * {float(scale)} AS v '
            "FROM read_csv(?, header = true) WHERE t IS NOT NULL AND v IS NOT NULL ORDER BY t",
            params=[str(path)],
        )
        data = rel.fetchnumpy()
    except duckdb.Error as exc:
        raise StepImportError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    return data["t"], np.asarray(data["rank"], dtype=object), data["v"]


def step_batches(
    offsets: np.ndarray, ranks: np.ndarray, values: np.ndarray, started: float
) -> list[Batch]:
    """One ``steps`` batch per distinct timestamp (rows arrive sorted by time)."""
    entities = np.array([rank_entity(r) for r in ranks], dtype=object)
    cuts = np.flatnonzero(np.diff(offsets)) + 1
    batches = []
    for idx in np.split(np.arange(len(offsets)), cuts):
        if len(idx) == 0:
            continue
        batches.append(
            Batch(
                SOURCE,
                started + float(offsets[idx[0]]),
                list(entities[idx]),
                ["step.time"] * len(idx),
                values[idx].tolist(),
            )
        )
    return batches


def import_step_times(
    db_path: str | os.PathLike[str],
    csv_path: str | os.PathLike[str],
    *,
    run: str | None = None,
    columns: StepColumns = StepColumns(),
    scale: float = 1.0,
    name: str | None = None,
) -> tuple[str, int]:
    """Add the file's step times to ``run`` (id or name), or to a new run when ``run`` is None.

    Times are seconds since the run started. Returns (run id, samples written).
    """
    offsets, ranks, values = read_step_csv(csv_path, columns, scale)
    if len(offsets) == 0:
        raise StepImportError(f"{csv_path} holds no step times")
    store = Store(db_path)
    try:
        if run is None:
            run_id = f"import-{time.strftime('%Y%m%d-%H%M%S')}"
            started = time.time() - float(offsets[-1])
            store.write_run(
                RunInfo(
                    run_id,
                    name or Path(csv_path).stem,
                    None,
                    [],
                    "",
                    "",
                    started,
                    1.0,
                    str(db_path),
                    mode="import",
                    ended=started + float(offsets[-1]),
                    status="finished",
                )
            )
        else:
            info = find_run(store.con, run, str(db_path))
            run_id, started = info.run_id, info.started
        written = store.write_ticks([(run_id, step_batches(offsets, ranks, values, started))])
    finally:
        store.close()
    return run_id, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.analysis.steps", description="Import per-rank step times into a run."
    )
    parser.add_argument("csv")
    parser.add_argument("--db", required=True)
    parser.add_argument("--run", help="run id or name (default: a new run for the import)")
    parser.add_argument("--rank-col", default="rank")
    parser.add_argument("--time-col", default="time", help="seconds since the run started")
    parser.add_argument("--value-col", default="step_time")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply values to get seconds")
    args = parser.parse_args(argv)
    try:
        if args.scale <= 0:
            raise UsageError("--scale must be positive")
        run_id, n = import_step_times(
            args.db,
            args.csv,
            run=args.run,
            scale=args.scale,
            columns=StepColumns(args.rank_col, args.time_col, args.value_col),
        )
    except AccelwatchError as exc:
        print(f"accelwatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"imported {n} step times into run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
