"""``accelwatch import``: per-rank step times and per-operation traces from other tools' files.

A trace becomes a run of its own (mode ``imported``) that keeps the trace's time axis: a trace
whose times are seconds from its start is stored with the run starting at epoch 0, so a sample
at ``t = 2160`` is stored at ``1970-01-01 00:36:00`` and every reader shows it as "t = 2,160 s"
(:mod:`agent.analysis.time_axis`); a trace of timestamps keeps them, the run starting at the
first. Step times become ``step.time`` samples of the ``steps`` source (entity ``rank0``...;
``step.count`` too when the trace numbers its steps), so every rule and viewer reads them as it
reads a recording's. Op traces also fill ``op_trace`` (the ``ops`` view) for the straggler
rules' per-stage compute comparison. The new run is analysed at once and its findings stored.

A trace may instead be added to an existing recorded run (``--run`` names it): relative times
are then seconds since that run started.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import numpy as np

from agent.analysis.engine import analyze_run, post_run_resources
from agent.analysis.finding import Finding
from agent.analysis.frame_sql import q
from agent.analysis.time_axis import IMPORTED_MODE
from agent.analysis.trace_read import ReadTrace, read_trace
from agent.catalog.steps import SOURCE, rank_entity
from agent.errors import UsageError
from agent.model import Batch, RunInfo
from agent.runs import RunNotFoundError, find_run
from agent.store import Store, ensure_op_trace


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote, for the command's summary line."""

    run_id: str
    name: str
    trace: ReadTrace
    samples: int
    added_to_recording: bool
    findings: list[Finding]


def new_import_id() -> str:
    return f"import-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def import_trace(
    db_path: str | os.PathLike[str],
    files: Sequence[str],
    *,
    run: str,
    overrides: Mapping[str, str | None] | None = None,
    scale: float = 1.0,
    time_unit: str | None = None,
    analyse: bool = True,
) -> ImportResult:
    """Import ``files`` as run ``run`` (a new imported run, or an existing recorded one),
    analyse it and store its findings.

    Bad files, unrecognised columns and a name already taken by an imported run are
    :class:`UsageError` (exit 2); nothing is written then."""
    if not run.strip():
        raise UsageError("--run needs a name")
    if not scale > 0:
        raise UsageError("--scale must be positive")
    existed = Path(db_path).exists()
    store = Store(db_path)
    try:
        with post_run_resources(store.con):  # no job to stay small for: DuckDB's own limits
            return _import(store, files, run, overrides, scale, time_unit, analyse, str(db_path))
    except BaseException:
        if not existed:  # a refused import leaves no database behind
            store.close()
            for leftover in (Path(db_path), Path(f"{db_path}.wal")):
                leftover.unlink(missing_ok=True)
        raise
    finally:
        store.close()


def _import(
    store: Store,
    files: Sequence[str],
    run: str,
    overrides: Mapping[str, str | None] | None,
    scale: float,
    time_unit: str | None,
    analyse: bool,
    db_path: str,
) -> ImportResult:
    con = store.con
    existing = _existing_run(con, run, str(db_path))
    trace = read_trace(con, files, overrides, scale=scale, time_unit=time_unit)
    if existing is None:
        info = _new_run(run, files, trace, str(db_path))
        offset = 0.0 if trace.axis.absolute else info.started
    else:
        info = existing
        offset = 0.0 if trace.axis.absolute else existing.started
    if existing is None:  # "incomplete" until every sample is in: a crash shows as such
        store.write_run(replace(info, status="incomplete"))
    samples = _write_samples(store, info.run_id, trace, offset)
    if trace.ops:
        _write_ops(con, info.run_id, offset)
    if existing is None:
        store.write_run(info)
    findings = analyze_run(con, info.run_id) if analyse else []
    return ImportResult(info.run_id, info.name, trace, samples, existing is not None, findings)


def _existing_run(con: duckdb.DuckDBPyConnection, run: str, db_path: str) -> RunInfo | None:
    """The recorded run the trace is added to, None for a new imported run; refuses to mix a
    second trace into an imported run or to add step times twice."""
    try:
        info = find_run(con, run, db_path)
    except RunNotFoundError:
        return None
    if info.mode == IMPORTED_MODE:
        raise UsageError(
            f"run {run!r} in {db_path} is already an imported trace; import under another --run"
        )
    had = con.execute(
        "SELECT count(*) FROM (SELECT 1 FROM samples WHERE run_id = ? AND source = ? LIMIT 1)",
        [info.run_id, SOURCE],
    ).fetchall()[0][0]
    if had:
        raise UsageError(f"run {run!r} in {db_path} already has step times")
    return info


def _new_run(name: str, files: Sequence[str], trace: ReadTrace, db_path: str) -> RunInfo:
    axis = trace.axis
    # The trace's own axis: epoch 0 is its origin (t = 0), or its first timestamp.
    started = axis.first if axis.absolute else min(0.0, axis.first)
    return RunInfo(
        new_import_id(),
        name,
        None,
        ["accelwatch", "import", *files],
        os.getcwd(),
        "",
        started,
        axis.interval,
        db_path,
        tags={"imported_from": ", ".join(Path(f).name for f in files)},
        mode=IMPORTED_MODE,
        ended=axis.last,
        exit_code=None,
        status="finished",
    )


def _ts(expr: str, offset: float) -> str:
    return f"make_timestamp(CAST(round(({expr} + {offset!r}) * 1e6) AS BIGINT))"


#: Batches handed to the store per write (one batch per distinct timestamp).
WRITE_CHUNK = 5000


def _write_samples(store: Store, run_id: str, trace: ReadTrace, offset: float) -> int:
    """``step.time`` (and ``step.count``) samples through the store's writer (whatever its
    layout), one batch per distinct timestamp, with each rank's attributes on the first."""
    con = store.con
    data = con.execute(
        f"SELECT t + {offset!r} AS ts, rank, v, step FROM import_steps ORDER BY ts, rank"
    ).fetchnumpy()
    names = ["label", *trace.attributes, *(["dp_rank", "stage"] if trace.ops else [])]
    described = {
        rank_entity(int(rank)): {"rank": int(rank), **json.loads(attrs)}
        for rank, attrs in con.execute(
            "SELECT rank, CAST(json_object("
            + ", ".join(f"{q(n)}, any_value({_quoted(n)})" for n in names)
            + ") AS VARCHAR) FROM import_steps GROUP BY rank"
        ).fetchall()
    }
    ts = np.asarray(data["ts"], dtype=np.float64)
    ranks, index = np.unique(np.asarray(data["rank"]), return_inverse=True)
    entities = np.array([rank_entity(int(r)) for r in ranks], dtype=object)[index]
    values = np.asarray(data["v"], dtype=np.float64)
    steps = None
    if trace.columns.step is not None:
        raw = data["step"]
        mask = np.ma.getmaskarray(raw) if np.ma.isMaskedArray(raw) else np.zeros(len(ts), bool)
        steps = np.where(mask, np.nan, np.ma.getdata(raw).astype(np.float64))
    bounds = [0, *(np.flatnonzero(np.diff(ts)) + 1).tolist(), len(ts)]
    batches: list[Batch] = []
    written = 0
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        ents = entities[a:b].tolist()
        metrics, vals = ["step.time"] * (b - a), values[a:b].tolist()
        if steps is not None:
            keep = np.isfinite(steps[a:b])
            ents += entities[a:b][keep].tolist()
            metrics += ["step.count"] * int(keep.sum())
            vals += steps[a:b][keep].tolist()
        batches.append(
            Batch(
                SOURCE, float(ts[a]), ents, metrics, vals, entity_attrs=described if i == 0 else {}
            )
        )
        if len(batches) >= WRITE_CHUNK:
            written += store.write_ticks([(run_id, batches)])
            batches = []
    if batches:
        written += store.write_ticks([(run_id, batches)])
    return written


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _write_ops(con: duckdb.DuckDBPyConnection, run_id: str, offset: float) -> None:
    ensure_op_trace(con)
    con.execute(
        f"""INSERT INTO op_trace
            SELECT ?, {_ts("t", offset)}, rank, dp_rank, stage, step, optype, duration
            FROM import_ops""",
        [run_id],
    )
