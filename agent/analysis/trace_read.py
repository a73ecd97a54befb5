"""Read foreign step and op traces (CSV, Parquet, JSON lines) into normalised temp tables.

Everything happens in DuckDB (its readers, then ``CREATE TEMP TABLE ... AS SELECT``), so a
trace of millions of rows never passes through Python row by row. The result, on the given
connection:

``import_steps(rank INTEGER, label VARCHAR, step BIGINT, t DOUBLE, v DOUBLE, <attributes>)``
    one row per rank and step: ``t`` seconds on the trace's axis, ``v`` the step time in s;
``import_ops(rank, dp_rank, stage, step, optype, t, duration)`` (op traces only)
    one row per operation, ``t`` its start.

``t`` is the trace's own time: seconds as written (a relative axis), or epoch seconds when the
trace holds timestamps (see :class:`TraceAxis`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from agent.analysis.frame_sql import q
from agent.analysis.trace_columns import TIME_UNITS, Column, TraceColumns, recognise
from agent.errors import UsageError

FORMATS: Mapping[str, str] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}
#: Numeric times above this are epoch timestamps (1985 in seconds), else seconds from the start.
EPOCH_S_MIN = 5e8
#: Epoch timestamps in finer units, by magnitude (2026 is 1.8e9 s, 1.8e12 ms, 1.8e15 us).
EPOCH_SCALES = ((5e17, 1e-9), (5e14, 1e-6), (5e11, 1e-3))


@dataclass(frozen=True)
class TraceAxis:
    """How the trace's times map to the store: ``absolute`` epoch seconds, or seconds from the
    trace's own origin; ``first``/``last`` bound ``t`` (the last step's end included)."""

    absolute: bool
    first: float
    last: float
    interval: float


@dataclass(frozen=True)
class ReadTrace:
    columns: TraceColumns
    axis: TraceAxis
    ranks: int
    steps: int
    ops: int
    attributes: tuple[str, ...]


def file_format(path: str) -> str:
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zst"):
        suffixes.pop()
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise UsageError(f"cannot tell the format of {path} (expected .csv, .parquet or .jsonl)")
    return fmt


def _reader(path: str, fmt: str) -> str:
    if fmt == "csv":
        return f"read_csv({q(path)}, header = true)"
    if fmt == "parquet":
        return f"read_parquet({q(path)})"
    return f"read_json({q(path)}, format = 'newline_delimited')"


def load_raw(con: duckdb.DuckDBPyConnection, files: Sequence[str]) -> list[str]:
    """``import_raw``: every file's rows (``aw_file`` = its position); returns the columns."""
    if not files:
        raise UsageError("no trace file given")
    parts = []
    for i, path in enumerate(files):
        if not os.path.isfile(path):
            raise UsageError(f"no trace file at {path}")
        parts.append(f"SELECT *, {i} AS aw_file FROM {_reader(path, file_format(path))}")
    for i, part in enumerate(parts):  # read each alone first, so an error names its file
        try:
            con.execute(f"DESCRIBE {part}")
        except duckdb.Error as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UsageError(f"cannot read {files[i]}: {detail}") from None
    con.execute("CREATE OR REPLACE TEMP TABLE import_raw AS " + " UNION ALL BY NAME ".join(parts))
    cols = [r[0] for r in con.execute("DESCRIBE import_raw").fetchall()]
    return [c for c in cols if c != "aw_file"]


def _ident(col: Column | None) -> str:
    assert col is not None
    return '"' + col.name.replace('"', '""') + '"'


def _file_ranks(files: Sequence[str]) -> str:
    """One file per rank: the number at the end of each file's name (``rank3.csv``) when those
    are distinct, else the file's position."""
    numbers = [re.findall(r"\d+", Path(f).name.split(".")[0]) for f in files]
    last = [int(n[-1]) if n else None for n in numbers]
    if None in last or len(set(last)) != len(last):
        return "aw_file"
    cases = " ".join(f"WHEN {i} THEN {n}" for i, n in enumerate(last))
    return f"CASE aw_file {cases} END"


def _rank_sql(con: duckdb.DuckDBPyConnection, cols: TraceColumns, files: Sequence[str]) -> str:
    """A SQL expression numbering ranks: the rank column when it is a number, the number in
    it ("worker_3") when that is unique per value, else the values' order."""
    if cols.rank is None:
        if cols.stage is not None:  # op trace without global ranks: number (stage, dp, tp)
            keys = ", ".join(_ident(c) for c in (cols.stage, cols.dp_rank, cols.tp_rank) if c)
            return f"dense_rank() OVER (ORDER BY {keys}) - 1"
        return _file_ranks(files)
    rank = _ident(cols.rank)
    ok = con.execute(
        f"SELECT count(*) FILTER (WHERE TRY_CAST({rank} AS BIGINT) IS NULL), "
        f"count(DISTINCT regexp_extract(CAST({rank} AS VARCHAR), '(\\d+)\\D*$', 1)), "
        f"count(DISTINCT {rank}), "
        f"count(*) FILTER (WHERE regexp_extract(CAST({rank} AS VARCHAR), '(\\d+)\\D*$', 1) = '')"
        " FROM import_raw WHERE {rank} IS NOT NULL".replace("{rank}", rank)
    ).fetchall()[0]
    not_int, distinct_numbers, distinct, without_number = ok
    if not_int == 0:
        return f"CAST({rank} AS BIGINT)"
    if without_number == 0 and distinct_numbers == distinct:
        return f"CAST(regexp_extract(CAST({rank} AS VARCHAR), '(\\d+)\\D*$', 1) AS BIGINT)"
    return f"dense_rank() OVER (ORDER BY CAST({rank} AS VARCHAR)) - 1"


def _time_sql(
    con: duckdb.DuckDBPyConnection, col: Column | None, time_unit: str | None
) -> tuple[str, bool]:
    """(SQL for seconds, absolute?) of the time column, by its type and magnitude."""
    if col is None:
        return "NULL::DOUBLE", False
    ident = _ident(col)
    kind = con.execute(
        f"SELECT typeof(any_value({ident})) FROM import_raw WHERE {ident} IS NOT NULL"
    ).fetchall()[0][0]
    if kind is not None and ("TIMESTAMP" in kind or kind == "DATE"):
        return f"epoch(CAST({ident} AS TIMESTAMP))", True
    scale = TIME_UNITS[time_unit] if time_unit else col.scale
    try:
        top = con.execute(f"SELECT max(abs(TRY_CAST({ident} AS DOUBLE))) FROM import_raw")
        biggest = top.fetchall()[0][0]
    except duckdb.Error:
        biggest = None
    if biggest is None:
        raise UsageError(f"the time column {col.name!r} holds no numbers or timestamps")
    if time_unit is None and col.scale == 1.0:
        for limit, factor in EPOCH_SCALES:
            if biggest > limit:
                scale = factor
                break
    return f"TRY_CAST({ident} AS DOUBLE) * {scale!r}", biggest * scale > EPOCH_S_MIN


def read_trace(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[str],
    overrides: Mapping[str, str | None] | None = None,
    *,
    scale: float = 1.0,
    time_unit: str | None = None,
) -> ReadTrace:
    """Read ``files`` into ``import_steps`` (and ``import_ops``); see the module docstring."""
    names = load_raw(con, files)
    source = files[0] if len(files) == 1 else f"{len(files)} files"
    cols = recognise(names, overrides, source=source, files_are_ranks=len(files) > 1)
    rank = _rank_sql(con, cols, files)
    label = f"CAST({_ident(cols.rank)} AS VARCHAR)" if cols.rank else "CAST(aw_file AS VARCHAR)"
    t_sql, absolute = _time_sql(con, cols.time, time_unit)
    assert cols.duration is not None  # recognise() requires it
    dur = f"TRY_CAST({_ident(cols.duration)} AS DOUBLE) * {cols.duration.scale * scale!r}"
    step = f"TRY_CAST({_ident(cols.step)} AS BIGINT)" if cols.step else "NULL::BIGINT"
    attrs = list(cols.attributes)
    attr_sql = "".join(f", {_ident(Column(a))} AS {_ident(Column(a))}" for a in attrs)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE import_rows AS
        SELECT {rank} AS rank, {label} AS label, {step} AS step, {t_sql} AS t, {dur} AS v
               {_op_columns(cols)}{attr_sql}
        FROM import_raw""")
    con.execute("DELETE FROM import_rows WHERE rank IS NULL OR v IS NULL OR NOT isfinite(v)")
    if cols.time is None:  # a step log without times: a rank's steps follow one another
        con.execute("""
            UPDATE import_rows SET t = s.t FROM (
                SELECT rank, step, coalesce(sum(v) OVER (PARTITION BY rank ORDER BY step
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS t
                FROM import_rows) s
            WHERE import_rows.rank = s.rank AND import_rows.step = s.step""")
    con.execute("DELETE FROM import_rows WHERE t IS NULL OR NOT isfinite(t)")
    n_ops = 0
    if cols.is_op_trace:
        n_ops = _ops_to_steps(con, attrs)
    else:
        extra = "".join(f", any_value({_ident(Column(a))}) AS {_ident(Column(a))}" for a in attrs)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE import_steps AS
            SELECT rank, any_value(label) AS label, step, t, avg(v) AS v{extra}
            FROM import_rows GROUP BY rank, step, t""")
    # A logged step time sits at its own time; an op trace (or times summed from durations)
    # lasts until its last step ends.
    end = "t" if cols.time is not None and not cols.is_op_trace else "t + v"
    row = con.execute(f"""
        SELECT count(DISTINCT rank), count(*), min(t), max({end}),
               median(gap) FILTER (WHERE gap > 0)
        FROM (SELECT *, t - lag(t) OVER (PARTITION BY rank ORDER BY t) AS gap
              FROM import_steps)""").fetchall()[0]
    ranks, steps, first, last, interval = row
    if not steps:
        raise UsageError(f"{source} holds no step times ({cols.described()})")
    axis = TraceAxis(absolute, float(first), float(last), float(interval or 1.0))
    return ReadTrace(cols, axis, int(ranks), int(steps), n_ops, tuple(attrs))


def _op_columns(cols: TraceColumns) -> str:
    if not cols.is_op_trace:
        return ""
    out = [f", CAST({_ident(cols.optype)} AS VARCHAR) AS optype"]
    for role in ("dp_rank", "stage"):
        col: Column | None = getattr(cols, role)
        out.append(
            f", TRY_CAST({_ident(col)} AS INTEGER) AS {role}" if col else f", NULL AS {role}"
        )
    return "".join(out)


def _ops_to_steps(con: duckdb.DuckDBPyConnection, attrs: list[str]) -> int:
    """``import_ops`` from the op rows, and per rank and step its step time (first op's start
    to last op's end). When op starts restart at every step (times relative to the step), the
    steps are laid end to end, each as long as its slowest rank."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE import_ops AS
        SELECT rank, dp_rank, stage, coalesce(step, 0) AS step, optype, t, v AS duration
        FROM import_rows""")
    restarts = con.execute("""
        SELECT count(*) FILTER (WHERE s0 < prev_end) FROM (
            SELECT min(t) AS s0, lag(max(t + duration)) OVER (ORDER BY step) AS prev_end
            FROM import_ops GROUP BY step)""").fetchall()[0][0]
    if restarts:
        con.execute("""
            UPDATE import_ops SET t = import_ops.t - s.s0 + s.offset FROM (
                SELECT step, s0, coalesce(sum(span) OVER (ORDER BY step ROWS BETWEEN
                    UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS offset
                FROM (SELECT step, min(t) AS s0, max(t + duration) - min(t) AS span
                      FROM import_ops GROUP BY step)) s
            WHERE import_ops.step = s.step""")
    names = [_ident(Column(a)) for a in attrs]
    inner = "".join(f", any_value({n}) AS {n}" for n in names)
    outer = "".join(f", any_value(r.{n}) AS {n}" for n in names)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE import_steps AS
        SELECT o.rank, any_value(r.label) AS label, o.step, min(o.t) AS t,
               max(o.t + o.duration) - min(o.t) AS v,
               any_value(o.dp_rank) AS dp_rank, any_value(o.stage) AS stage{outer}
        FROM import_ops o
        JOIN (SELECT rank, any_value(label) AS label{inner} FROM import_rows GROUP BY rank) r
            USING (rank)
        GROUP BY o.rank, o.step""")
    return int(con.execute("SELECT count(*) FROM import_ops").fetchall()[0][0])
