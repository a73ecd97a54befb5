"""At close, a short run's file rewritten into a fresh one: its last rows sorted straight into
spans there, and none of the free blocks a move in place would leave.

Moving the writer's last rows into spans in place and then copying the file costs the writer
twice (the move writes the spans once, the copy again) and leaves the moved rows' blocks free
in the middle of the file until the copy. :func:`finish_into_fresh` writes every table but the
writer's into a fresh file once, as it is, and the writer's rows sorted into spans there,
ordered by metric: in a short run each series has only a few hundred values, so DuckDB's
1,024-value compression vectors span several series, and neighbouring series of one metric
(every GPU's power, say) have values of one scale. :func:`rewrite_if_worth_it` is the plain
copy for a file whose rows were already moved (a failed fresh rewrite, an older file).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from agent.store_buckets import BucketChoice, aggregate_buckets, has_buckets, insert_buckets
from agent.store_span_rows import SPAN_ROWS_TABLE, insert_span_rows, span_columns, stored_values
from agent.store_spans import span_order

#: At close, a file at most this big whose free blocks are at least :data:`REWRITE_FREE_SHARE`
#: of it is rewritten into a fresh file: the last move leaves the blocks of the rows it moved
#: free in the middle of the file (an hour of them at most), which is most of a short run's
#: file (a 10-minute run: 10.9 B a value, 4 B rewritten) and a few percent of a day's.
REWRITE_MAX_BYTES = 128 * 2**20
REWRITE_FREE_SHARE = 0.2
#: Block size of a fresh file of fewer than :data:`SMALL_FILE_ROWS` samples. Every table takes
#: blocks of its own, so a short run's small tables cost a block each: at 64 KiB that was
#: 0.5 B a value of a 10-minute recording (870 k values), at 32 KiB half. The samples compress
#: a little worse in smaller blocks (a 2 h recording: 3.07 B a value at 64 KiB, 3.19 at 32 KiB;
#: 16 KiB blocks 7.7 B at 10 minutes), so a bigger file keeps its own block size.
SMALL_FILE_BLOCK_SIZE = 32 * 1024
SMALL_FILE_ROWS = 2_000_000
#: The writer's own tables: empty in the fresh file (their rows are in its spans).
_WRITER_TABLES = ("sample_recent", "sample_moving")
#: Counted in one statement to decide whether a file is written afresh at close.
_COUNTED = (*_WRITER_TABLES, "sample_spans")
#: Rows of the writer's table sorted at once at close (~40 MB of NumPy arrays at most, for a
#: moment): one scan of the table, in its tick order, while picking a part of the series per
#: step costs a scan each (a 10-minute recording's 870 k rows in one go: 0.05 µs a value
#: to read, against 0.11 in four parts).
FRESH_CHUNK_ROWS = 2**20
#: A file whose samples span less than this, ticked at least every :data:`DENSE_TICK_S` on
#: average, gets no buckets for its new series at close: the post-run frame of any of its
#: runs then picks a bucket under the stored 30 s (``agent.analysis.engine.choose_bucket_s``:
#: at most 3,000 buckets, so 15 s up to 12.5 h at an interval <= 15 s) and reads the raw values
#: anyway. Skipping them saves the close ~0.07 us a value and a short file two blocks.
BUCKETS_FROM_S = 12.5 * 3600
DENSE_TICK_S = 15.0


def rewrite_if_worth_it(con: Any, path: Path) -> bool:
    """Copy the (checkpointed) database ``con`` has open at ``path`` into a fresh file and put
    it in place, when it is small and mostly free blocks (see :func:`_in_place_of`; fewer
    than :data:`SMALL_FILE_ROWS` samples: :data:`SMALL_FILE_BLOCK_SIZE` blocks). Returns
    whether it did; on any failure the original stays as it was (the caller says so)."""
    row = con.execute(
        "SELECT block_size, total_blocks, free_blocks FROM pragma_database_size() "
        "WHERE database_name = current_database()"
    ).fetchone()
    if row is None or not row[1] or row[2] / row[1] < REWRITE_FREE_SHARE:
        return False
    if path.stat().st_size > REWRITE_MAX_BYTES:
        return False
    name = _database(con)
    block_size = int(row[0])
    if _count(con, "sample_spans") < SMALL_FILE_ROWS:
        block_size = SMALL_FILE_BLOCK_SIZE

    def fill() -> dict[str, int]:
        con.execute(f'COPY FROM DATABASE "{name}" TO aw_compact')
        tables = _tables(con, name)
        return _counts(con, [f'"{name}".main."{t}"' for t in tables], tables)

    _in_place_of(con, path, fill, block_size)
    return True


def finish_into_fresh(con: Any, path: Path) -> bool:
    """At close, write the database ``con`` has open at ``path`` into a fresh file with the
    writer's rows (``sample_recent``) sorted into spans there, and put it in place; instead
    of moving them into spans in place and copying the file after. Done when the file is
    small and those rows are at least :data:`REWRITE_FREE_SHARE` of its samples (what the
    move in place would have left free), and no move is half done (``sample_moving`` is
    empty). Returns whether it did; False without a change otherwise. On a failure the
    original stays as it was, its rows still in ``sample_recent``, and this raises."""
    if path.stat().st_size > REWRITE_MAX_BYTES:
        return False
    got = _counts(con, list(_COUNTED), list(_COUNTED))
    if got["sample_moving"]:
        return False
    recent, spanned = got["sample_recent"], got["sample_spans"]
    if not recent or recent < REWRITE_FREE_SHARE * (recent + spanned):
        return False
    name = _database(con)
    (block_size,) = con.execute(
        "SELECT block_size FROM pragma_database_size() WHERE database_name = ?", [name]
    ).fetchone()
    if recent + spanned < SMALL_FILE_ROWS:
        block_size = SMALL_FILE_BLOCK_SIZE
    # Schema 5 keeps every moved value of an analysed series in its buckets
    # (agent.store_buckets): the rows sorted here get theirs as the Compactor's move would give
    # them, the choice of series recorded first, so the copy below carries it.
    ranked = _ranked_series(con, name)
    got = con.execute(
        f'SELECT epoch_us(ts) AS us FROM (SELECT DISTINCT ts FROM "{name}".main.sample_recent) '
        "ORDER BY 1"
    ).fetchnumpy()
    stamps = np.asarray(got["us"], dtype=np.int64)
    buckets: Buckets | None = None
    if has_buckets(con):
        choice = BucketChoice()
        ids = np.sort(ranked[0]).astype(np.int32)
        serve = buckets_could_serve(con, name, stamps)
        buckets = Buckets(choice.bucketed(con, ids, new_ones=serve), choice.layout)
    con.execute("CHECKPOINT")  # no WAL may outlive the rename (DuckDB refuses a foreign one)

    def fill() -> dict[str, int]:
        con.execute(f'COPY FROM DATABASE "{name}" TO aw_compact (SCHEMA)')
        tables = _tables(con, name)
        expected = _counts(con, [f'"{name}".main."{t}"' for t in tables], tables)
        for table in tables:
            if table in _WRITER_TABLES:
                expected[table] = 0
                continue
            if not expected[table]:
                continue  # an empty table: ~0.5 ms a statement, ~20 of them in a file
            con.execute(
                f'INSERT INTO aw_compact.main."{table}" SELECT * FROM "{name}".main."{table}"'
            )
        expected["sample_ticks"] += _sort_recent_into(con, name, ranked, stamps, buckets, expected)
        expected[SPAN_ROWS_TABLE] += recent
        return expected

    _in_place_of(con, path, fill, int(block_size))
    return True


@dataclass(frozen=True)
class Buckets:
    """The series of ``sample_recent`` whose values get buckets, and the file's layout."""

    bucketed: np.ndarray
    layout: tuple[int, float]


def buckets_could_serve(con: Any, name: str, stamps: np.ndarray) -> bool:
    """Whether a post-run frame could read stored buckets of the samples in database ``name``
    (``stamps``: the writer's table's distinct times, µs, ascending): False when they span
    less than :data:`BUCKETS_FROM_S` at a tick every :data:`DENSE_TICK_S` or less (a run's
    duration is at most the file's span, its interval at most the mean gap)."""
    first, moved = con.execute(
        f'SELECT epoch_us(min(ts)), count(*) FROM "{name}".main.sample_ticks'
    ).fetchone()
    if not len(stamps):
        return True
    start = int(stamps[0]) if first is None else min(int(first), int(stamps[0]))
    span_s = (int(stamps[-1]) - start) / 1e6
    gaps = len(stamps) + int(moved) - 1
    return span_s >= BUCKETS_FROM_S or span_s > DENSE_TICK_S * max(gaps, 1)


def _ranked_series(con: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, rows) of the series in ``sample_recent``, in the order the sort at close puts
    them: by metric, then entity and source (series of one scale side by side)."""
    ranked = con.execute(
        f'SELECT r.series_id, r.n FROM (SELECT series_id, count(*) AS n FROM "{name}".main.'
        f'sample_recent GROUP BY 1) r LEFT JOIN "{name}".main.series s USING (series_id) '
        "ORDER BY s.metric, s.entity, s.source, r.series_id"
    ).fetchnumpy()
    return (
        np.asarray(ranked["series_id"], dtype=np.int64),
        np.asarray(ranked["n"], dtype=np.int64),
    )


def _sort_recent_into(
    con: Any,
    name: str,
    ranked: tuple[np.ndarray, np.ndarray],
    stamps: np.ndarray,
    buckets: Buckets | None,
    expected: dict[str, int],
) -> int:
    """Append ``sample_recent``'s rows to the fresh file's spans, series after series in the
    order of their metric (then entity and source), each series' ticks ascending or, every
    other series, descending (:func:`agent.store_spans.span_order`), in chunks of at most
    :data:`FRESH_CHUNK_ROWS` rows (memory stays bounded), and their buckets (counted into
    ``expected``). Returns the ticks added to ``sample_ticks`` (``stamps``: the distinct times
    of ``sample_recent``, µs, ascending)."""
    (top,) = con.execute(
        f'SELECT coalesce(max(tick), 0) FROM "{name}".main.sample_ticks'
    ).fetchone()
    first = int(top) + 1
    new_ticks = {  # noqa: F841 - read by DuckDB's replacement scan
        "tick": np.arange(first, first + len(stamps), dtype=np.int32),
        "ts": stamps.astype("datetime64[us]"),
    }
    con.execute("INSERT INTO aw_compact.main.sample_ticks SELECT tick, ts FROM new_ticks")
    ids, counts = ranked
    lo = int(ids.min())
    rank_of = np.zeros(int(ids.max()) - lo + 1, dtype=np.int32)
    rank_of[ids - lo] = np.arange(len(ids), dtype=np.int32)
    ends = np.cumsum(counts)
    start = 0
    while start < len(ids):
        offset = int(ends[start] - counts[start])
        stop = max(start + 1, int(np.searchsorted(ends, offset + FRESH_CHUNK_ROWS, "right")))
        where = ""
        if start or stop < len(ids):  # a part of the series: read their rows only
            chunk_ids = {"series_id": ids[start:stop].astype(np.int32)}  # noqa: F841
            where = "WHERE series_id IN (SELECT series_id FROM chunk_ids)"
        rows = con.execute(
            f'SELECT series_id, epoch_us(ts) AS us, value FROM "{name}".main.sample_recent ' + where
        ).fetchnumpy()
        sids = np.asarray(rows["series_id"], dtype=np.int32)
        ticks = (first + np.searchsorted(stamps, rows["us"])).astype(np.int32)
        order = span_order(rank_of[sids - lo], ticks)
        values = stored_values(rows["value"])[order]
        insert_span_rows(
            con, span_columns(sids[order], ticks[order], values), into="aw_compact.main."
        )
        if buckets is not None:
            stored = aggregate_buckets(
                sids[order], np.asarray(rows["us"], dtype=np.int64)[order],
                values, buckets.bucketed, buckets.layout,
            )  # fmt: skip
            full, flat = insert_buckets(con, stored, into="aw_compact.main.")
            expected["sample_buckets"] += full
            expected["sample_buckets_flat"] += flat
        start = stop
    return len(stamps)


def _in_place_of(con: Any, path: Path, fill: Any, block_size: int) -> None:
    """Write a fresh file of ``block_size`` blocks with ``fill`` (which writes ``aw_compact``
    and returns the rows each of its tables must hold), check it table by table and put it in place of ``path``. The
    copy is private from its first byte (the agent's umask), synced, then renamed over the
    original while ``con`` still holds the original's lock (so no other writer can slip in
    between); on any failure the copy is removed and the original stays as it was."""
    fresh = path.with_name(path.name + ".compact")
    leftovers = (fresh, fresh.with_name(fresh.name + ".wal"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    (order,) = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()
    literal = "'" + str(fresh).replace("'", "''") + "'"
    try:
        con.execute("SET preserve_insertion_order = true")  # the spans' order is their size
        con.execute(f"ATTACH {literal} AS aw_compact (BLOCK_SIZE {block_size})")
        try:
            con.begin()  # one transaction: each table's rows appended to one set of row groups
            try:
                expected = fill()
                con.commit()
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.rollback()
                raise
            names = list(expected)
            counted = _counts(con, [f'aw_compact.main."{t}"' for t in names], names)
            for table, rows in expected.items():
                if counted[table] != rows:
                    raise duckdb.InternalException(
                        f"rewrite: {table} has {counted[table]} of {rows} rows"
                    )
        finally:
            con.execute("DETACH aw_compact")
        os.chmod(fresh, 0o600)
        fd = os.open(fresh, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(fresh, path)
    except BaseException:
        for leftover in leftovers:
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise
    finally:
        with contextlib.suppress(duckdb.Error):
            con.execute(f"SET preserve_insertion_order = {str(order).lower()}")
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _database(con: Any) -> str:
    (name,) = con.execute("SELECT current_database()").fetchone()
    return str(name)


def _tables(con: Any, name: str) -> list[str]:
    return [
        t
        for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [name]
        ).fetchall()
    ]


def _count(con: Any, table: str) -> int:
    (n,) = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(n)


def _counts(con: Any, sources: list[str], names: list[str]) -> dict[str, int]:
    """Rows of each table of ``sources`` (SQL names), keyed by ``names``, in one statement:
    a statement costs DuckDB ~0.6 ms whatever it counts, and a file has ~30 tables."""
    if not sources:
        return {}
    row = con.execute(
        "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in sources)
    ).fetchone()
    return {n: int(c) for n, c in zip(names, row, strict=True)}
