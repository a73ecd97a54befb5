"""Schema 4: samples moved, off the per-tick path, into series-clustered spans with tick ids.

DuckDB compresses a column per vector (ALP: 1,024 values; bit-packing: 2,048), so a value
costs what its neighbours cost. In tick order every vector mixes a tick's ~1,500 series
(counters, rates, flags): 6-7 bytes a value. Sorted by series, a vector holds one series'
consecutive values (~2.7 B on a long run), and a tick id (an integer that grows by one along a
series) instead of the jittered timestamp costs next to nothing.

The writer keeps appending each flush in tick order to ``sample_recent(series_id, ts, value)``
(one statement per flush, so durability is unchanged). Once it holds :data:`SPAN_TICKS` ticks,
:class:`Compactor` moves them into ``sample_spans(series_id, tick, value)`` +
``sample_ticks(tick, ts)``, in chunks of at most :data:`CHUNK_ROWS` rows, one transaction each
(memory stays within the store's limit, nothing spills, and the writer flushes between them);
at close it moves the rest. ``sample_values(series_id, ts, value)`` is a view over both
tables, and ``samples`` reads it as before. Schema 5 adds, in the same move, per-bucket
aggregates of the series the analysis reads (:mod:`agent.store_buckets`); schema 6 stores
each series' values divided by a power of two behind the same ``sample_spans``
(:mod:`agent.store_span_rows`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from agent.store_buckets import BucketChoice, aggregate_buckets, insert_buckets
from agent.store_span_rows import insert_span_rows, span_columns, stored_values
from agent.tables import has_table

#: Ticks the writer's table holds before they are moved into one span (an hour at 1 Hz).
#: Spans+ticks per value on a 2 h recording at 1 Hz (8 GPUs, measured): 600 ticks 3.43 B,
#: 1,800 3.16 B, 3,600 2.83 B, 7,200 2.69 B; in tick order 7-8 B. A short span compresses
#: worse (ALP vectors are 1,024 values, bit-packing groups 2,048); moving twice (short
#: spans merged into long ones) would cost the writer another ~0.3 µs a value.
SPAN_TICKS = 3600
#: Rows one step moves at most (one transaction, ~6 MB of NumPy columns).
CHUNK_ROWS = 262_144

#: Version 4, the layout. A version-3 file's ``sample_values`` (tick order) becomes the
#: writer's table; its rows are moved into spans like any others. ``samples`` is unchanged.
SCHEMA_V4_LAYOUT = """
CREATE TABLE IF NOT EXISTS sample_ticks (tick INTEGER, ts TIMESTAMP);
CREATE TABLE IF NOT EXISTS sample_spans (series_id INTEGER, tick INTEGER, value DOUBLE);
CREATE TABLE IF NOT EXISTS sample_moving (series_id INTEGER, ts TIMESTAMP, value DOUBLE);
DROP VIEW IF EXISTS samples;
ALTER TABLE sample_values RENAME TO sample_recent;
CREATE VIEW sample_values AS
    SELECT p.series_id, k.ts, p.value FROM sample_spans p JOIN sample_ticks k USING (tick)
    UNION ALL SELECT series_id, ts, value FROM sample_moving
    UNION ALL SELECT series_id, ts, value FROM sample_recent;
CREATE VIEW samples AS
    SELECT s.run_id, v.ts, s.source, s.entity, s.metric, v.value
    FROM sample_values v JOIN series s USING (series_id);
"""

#: The physical tables behind ``sample_values`` in a version-4 file.
SPAN_TABLES = ("sample_recent", "sample_moving", "sample_spans", "sample_ticks")


def has_spans(con: Any) -> bool:
    """Whether a database stores samples in spans (schema 4)."""
    return has_table(con, "sample_ticks")


def span_order(series_id: np.ndarray, tick: np.ndarray) -> np.ndarray:
    """The order rows are stored in a span: by series, each series' ticks ascending or, every
    other series, descending. The tick column then steps by +1 or -1 and by 0 where one series
    meets the next, which bit-packs in 2 bits; restarting every series at its first tick costs
    a span of 600 ticks ~1.4 B a value (measured), as a bit-packing group spans series."""
    n = len(series_id)
    if n and (np.diff(tick) >= 0).all():
        # In tick order (the writer's table) a stable sort by series is all it takes, and a
        # chunk's few series as 16-bit keys make NumPy's stable sort a radix sort.
        lo, width = int(series_id.min()), int(series_id.max()) - int(series_id.min())
        key = (series_id - lo).astype(np.uint16 if width < 2**16 else np.int64)
        by_series = np.argsort(key, kind="stable")
        return by_series[_zigzag(series_id[by_series])]
    zig = np.where(series_id % 2 == 1, np.int64(2**31 - 1) - tick, tick).astype(np.int64)
    # rows out of tick order (a late timestamp): sort by series, then tick
    return np.argsort((series_id.astype(np.int64) << 32) | zig, kind="stable")


def _zigzag(sorted_ids: np.ndarray) -> np.ndarray:
    """Positions that reverse every odd series' rows in rows sorted by series: ``pos`` in an
    even series, ``first + last - pos`` in an odd one (two repeats over the rows, one per
    series' offset and one of its sign, instead of one per bound)."""
    n = len(sorted_ids)
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    lengths = np.diff(np.r_[starts, n])
    odd = sorted_ids[starts] % 2 == 1
    offset = np.where(odd, 2 * starts + lengths - 1, 0)
    sign = np.where(odd, -1, 1).astype(np.int64)
    return np.repeat(offset, lengths) + np.repeat(sign, lengths) * np.arange(n)


def checkpoint(con: Any) -> None:
    """Write a finished move, which frees the dropped ``sample_moving``'s blocks for the next
    appends. Skipped while another thread's transaction forbids it (the writer's next
    checkpoint does it)."""
    with contextlib.suppress(duckdb.TransactionException):
        con.execute("CHECKPOINT")


def _chunks(counts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Series-id ranges of at most :data:`CHUNK_ROWS` rows (a bigger series alone)."""
    out: list[tuple[int, int]] = []
    lo: int | None = None
    hi = 0
    rows = 0
    for sid, n in counts:
        if lo is not None and rows + n > CHUNK_ROWS:
            out.append((lo, hi))
            lo, rows = None, 0
        if lo is None:
            lo = sid
        hi = sid
        rows += n
    if lo is not None:
        out.append((lo, hi))
    return out


@dataclass
class _Move:
    """A move in progress, in one transaction on its own cursor (readers see the rows in
    ``sample_moving`` until it commits, then in spans; the writer flushes beside it). The
    table's timestamps, ascending, are cut into spans of :data:`SPAN_TICKS` ticks, each moved
    in series-id chunks of at most :data:`CHUNK_ROWS` rows."""

    cursor: Any
    stamps: np.ndarray
    first_tick: int
    #: (first, last) index into ``stamps`` of each span still to move, the current first.
    spans: list[tuple[int, int]]
    chunks: list[tuple[int, int]] = field(default_factory=list)


class Compactor:
    """Moves the writer's rows into spans. Once ``sample_recent`` holds :data:`SPAN_TICKS`
    ticks it is renamed ``sample_moving`` (the writer appends to a new, empty one), and
    :meth:`step` moves one chunk at a time: the writer's thread calls it between flushes. The
    move commits with its last chunk, which drops ``sample_moving``: no row is deleted one by
    one (in tick order, deleting one series touches every vector, and DuckDB keeps ~16 KB of
    version data per touched vector until a checkpoint: an hour of them is past the store's
    memory limit). Interrupted (a crash, a failed step), nothing of the move is committed and
    it is planned again from the file."""

    def __init__(self) -> None:
        self._loaded = False
        self._move: _Move | None = None
        #: Ticks in ``sample_recent`` (counted by the writer, read from the file at first).
        self.recent_ticks = 0
        #: Whether ``sample_moving`` holds rows (an interrupted move to finish).
        self.pending = False
        #: Rows moved, for tests and the benchmark.
        self.moved_rows = 0
        #: Bucket rows written, for tests and the benchmark.
        self.bucket_rows = 0
        self._buckets = BucketChoice()

    def reset(self) -> None:
        """Forget the move in progress (rolled back) and re-read the counters from the file."""
        if self._move is not None:
            with contextlib.suppress(Exception):
                self._move.cursor.rollback()
            with contextlib.suppress(Exception):
                self._move.cursor.close()
        self._loaded = False
        self._move = None
        self._buckets.reset()

    def note_ticks(self, n: int) -> None:
        """The writer appended ``n`` ticks to ``sample_recent``."""
        self.recent_ticks += n

    @property
    def moving(self) -> bool:
        """A move is in progress (its transaction is open: the writer's checkpoints wait)."""
        return self._move is not None

    def _load(self, con: Any) -> None:
        if self._loaded:
            return
        (recent,) = con.execute("SELECT count(DISTINCT ts) FROM sample_recent").fetchall()[0]
        (moving,) = con.execute("SELECT count(*) FROM sample_moving").fetchall()[0]
        self.recent_ticks, self.pending = int(recent), bool(moving)
        self._loaded = True

    def due(self, con: Any) -> bool:
        """Whether a move is in progress or should start."""
        self._load(con)
        return self._move is not None or self.pending or self.recent_ticks >= SPAN_TICKS

    def step(self, con: Any, *, force: bool = False) -> bool:
        """Move one chunk, starting a move first if none is in progress (``force``: whatever
        ``sample_recent`` holds, else once it holds :data:`SPAN_TICKS` ticks). Returns whether
        the move has chunks left."""
        self._load(con)
        try:
            if self._move is None:
                if not self.pending:
                    if not (force or self.recent_ticks >= SPAN_TICKS):
                        return False
                    self._rotate(con)
                self._move = self._plan(con)
                if self._move is None:
                    return False
            move = self._move
            if not move.chunks:
                self._next_span(move)
            lo, hi = move.chunks.pop(0)
            self._move_chunk(move, lo, hi)
            if move.chunks or len(move.spans) > 1:
                if not move.chunks:
                    move.spans.pop(0)
                return True
            move.cursor.execute(
                "DROP TABLE sample_moving; CREATE TABLE sample_moving "
                "(series_id INTEGER, ts TIMESTAMP, value DOUBLE)"
            )
            move.cursor.commit()
        except BaseException:
            self.reset()
            raise
        move.cursor.close()
        self._move = None
        self.pending = False
        return False

    def run(self, con: Any, budget_s: float | None) -> None:
        """Move chunks for about ``budget_s`` seconds (None: until nothing is due; one chunk
        at least), checkpointing when a move is done (its dropped table's blocks are free)."""
        start = time.monotonic()
        while self.due(con):
            if not self.step(con):
                checkpoint(con)
            if budget_s is not None and time.monotonic() - start >= budget_s:
                return

    def finish(self, con: Any) -> None:
        """Move everything (at close): a move in progress or interrupted, then the rest."""
        self._load(con)
        for _ in range(2):
            if self._move is None and not self.pending:
                (left,) = con.execute("SELECT count(*) FROM sample_recent").fetchall()[0]
                if not left:
                    break
            while self.step(con, force=True):
                pass
        checkpoint(con)

    def _rotate(self, con: Any) -> None:
        """Hand the writer a new, empty ``sample_recent``; its rows become ``sample_moving``."""
        con.begin()
        try:
            con.execute(
                "DROP TABLE sample_moving; ALTER TABLE sample_recent RENAME TO sample_moving; "
                "CREATE TABLE sample_recent (series_id INTEGER, ts TIMESTAMP, value DOUBLE)"
            )
            con.commit()
        except BaseException:
            con.rollback()
            raise
        self.recent_ticks = 0
        self.pending = True

    def _plan(self, con: Any) -> _Move | None:
        got = con.execute(
            "SELECT epoch_us(ts) AS us FROM (SELECT DISTINCT ts FROM sample_moving) ORDER BY 1"
        ).fetchnumpy()
        stamps = np.asarray(got["us"], dtype=np.int64)
        if not len(stamps):
            self.pending = False
            return None
        (top,) = con.execute("SELECT coalesce(max(tick), 0) FROM sample_ticks").fetchall()[0]
        cursor = con.cursor()
        cursor.begin()
        first = int(top) + 1
        new_ticks = {  # noqa: F841 - read by DuckDB's replacement scan
            "tick": np.arange(first, first + len(stamps), dtype=np.int32),
            "ts": stamps.astype("datetime64[us]"),
        }
        cursor.execute("INSERT INTO sample_ticks SELECT tick, ts FROM new_ticks")
        cuts = range(0, len(stamps), SPAN_TICKS)
        spans = [(a, min(a + SPAN_TICKS, len(stamps)) - 1) for a in cuts]
        return _Move(cursor, stamps, first, spans)

    def _span_bounds(self, move: _Move) -> tuple[int, int]:
        a, b = move.spans[0]
        return int(move.stamps[a]), int(move.stamps[b])

    def _next_span(self, move: _Move) -> None:
        lo_us, hi_us = self._span_bounds(move)
        counts = move.cursor.execute(
            "SELECT series_id, count(*) FROM sample_moving "
            "WHERE ts BETWEEN make_timestamp(?) AND make_timestamp(?) GROUP BY 1 ORDER BY 1",
            [lo_us, hi_us],
        ).fetchall()
        move.chunks = _chunks(counts) or [(0, -1)]

    def _move_chunk(self, move: _Move, lo: int, hi: int) -> None:
        lo_us, hi_us = self._span_bounds(move)
        got = move.cursor.execute(
            "SELECT series_id, epoch_us(ts) AS us, value FROM sample_moving WHERE series_id "
            "BETWEEN ? AND ? AND ts BETWEEN make_timestamp(?) AND make_timestamp(?)",
            [lo, hi, lo_us, hi_us],
        ).fetchnumpy()
        us = np.asarray(got["us"], dtype=np.int64)
        sids = np.asarray(got["series_id"], dtype=np.int32)
        ticks = (move.first_tick + np.searchsorted(move.stamps, us)).astype(np.int32)
        order = span_order(sids, ticks)
        values = stored_values(got["value"])[order]
        insert_span_rows(move.cursor, span_columns(sids[order], ticks[order], values))
        ids = np.unique(sids)
        buckets = aggregate_buckets(
            sids[order], us[order], values,
            self._buckets.bucketed(move.cursor, ids), self._buckets.layout,
        )  # fmt: skip
        insert_buckets(move.cursor, buckets)
        self.moved_rows += len(sids)
        self.bucket_rows += 0 if buckets is None else len(buckets["n"])
