"""The statements of one flush: what :class:`agent.store_writer.Store` sends DuckDB per commit.

DuckDB's cost is per statement (about 1 ms of CPU for an ``INSERT`` of any size, plus the WAL's
sync at commit), hardly per row, so a flush is planned as a list of steps and sent as few
statements as it can: a flush that only appends samples is one autocommitted ``INSERT``; new
series, events, entity attributes, the training client's records and the heartbeat join it in
one transaction. Kept apart from the writer's thread, retry and heartbeat bookkeeping.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import duckdb

from agent.model import Batch
from agent.series import SeriesIds
from agent.store import _us
from agent.store_rows import entity_columns, insert_events, sample_columns, scan_columns
from agent.tracking.tables import insert_records

Step = Callable[[], object]


def flush_connection(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """The connection the flushes run on: a cursor of the writer's (same database, its own
    transactions) with DuckDB's optimizer off. A flush's statements append rows read from
    NumPy columns or update one row of a small table, which no optimizer pass improves, and
    skipping them saves ~0.3 ms of a ~2 ms flush (0.1 us a value). The writer's own
    connection keeps it for everything else (moves, close, the post-run analysis)."""
    flush = con.cursor()
    flush.execute("PRAGMA disable_optimizer")
    return flush


def plan_batches(
    con: duckdb.DuckDBPyConnection,
    series: SeriesIds,
    run_id: str,
    batches: list[Batch],
    steps: list[Step],
) -> int:
    """Append the statements that write ``batches`` of one run to ``steps``; returns the
    samples. Series ids are handed out now (pending in ``series`` until the flush commits)."""
    sizes = [len(b.values) for b in batches]
    samples = [b for b, size in zip(batches, sizes) if size]
    n = 0
    if samples:
        ids, orders, new = series.ids(run_id, samples, con)
        if new is not None:
            steps.append(lambda: series.insert(con, run_id, new))
        tick_samples = sample_columns(ids, orders, samples, [size for size in sizes if size])
        steps.append(
            lambda: scan_columns(
                con, "INSERT INTO sample_recent SELECT series_id, ts, value FROM columns",
                tick_samples,
            )
        )  # fmt: skip
        n = len(ids)
    events = [e for b in batches for e in b.events]
    if events:
        steps.append(lambda: insert_events(con, run_id, events))
    records = [b.records for b in batches if b.records]
    if records:  # the training client's metrics and config (not counted as samples)
        steps.append(lambda: insert_records(con, run_id, records))
    attrs = [(b.ts, b.source, ent, a) for b in batches for ent, a in b.entity_attrs.items()]
    if attrs:
        tick_entities = entity_columns(attrs)
        steps.append(
            lambda: scan_columns(
                con, "INSERT INTO entity_log SELECT ?, ts, source, entity, attrs FROM columns",
                tick_entities, [run_id],
            )
        )  # fmt: skip
    return n


def run_steps(con: duckdb.DuckDBPyConnection, steps: list[Step]) -> None:
    """Send the planned steps: one alone autocommits (one statement, one commit); several run
    in one transaction, rolled back whole when one fails."""
    if len(steps) == 1:
        steps[0]()
        return
    if not steps:
        return
    con.begin()
    try:
        for step in steps:
            step()
        con.commit()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.rollback()
        raise


def write_heartbeat(con: duckdb.DuckDBPyConnection, run_id: str, last: float | None) -> None:
    """The run's heartbeat (now) and last sample time: how readers tell a dead agent.

    Appended, never updated: after the writer has released DuckDB's block cache
    (``store_memory``), an ``UPDATE`` between appends makes DuckDB keep every later flush's
    rows as transaction memory until the next checkpoint (an ``UPDATE`` of this row every 4 s
    held ~9 MB more at each checkpoint's eve). ``runs`` reads each run's newest row."""
    con.execute(
        "INSERT INTO run_heartbeat VALUES (?, make_timestamp(?), make_timestamp(?))",
        [run_id, _us(time.time()), None if last is None else _us(last)],
    )


def newest_sample(batches: list[Batch], known: float | None) -> float | None:
    """The newest sample time of ``batches`` and ``known`` (None when neither has one)."""
    last = max((b.ts for b in batches if len(b.values)), default=None)
    if known is not None:
        last = known if last is None else max(last, known)
    return last
