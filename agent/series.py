"""The writer's series dictionary: (run, source, entity, metric) → the integer id stored per value.

A tick of 8 GPUs is ~1,500 values whose labels hardly ever change, so the writer keeps the ids
it handed out and stores only ``(series_id, ts, value)`` per value; a label is written once, to
``series``, the first time it is seen. A collector usually emits the same series in the same
order every tick, so a batch whose labels equal a recent batch's of that source reuses its
id array outright (one list comparison instead of a lookup per value).

Ids handed out inside a transaction stay *pending* until it commits: a rolled-back flush (a full
disk) must not leave ids in the cache that the file never got.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.model import Batch
from agent.store_spans import has_spans
from agent.tables import has_table

_Key = tuple[str, str]  # (run_id, source)


#: Version 3, the layout: each series (run, source, entity, metric) is stored once in
#: ``series`` and every value as (series_id, ts, value), so a tick writes three numeric
#: columns instead of repeating ~1,500 label strings, and scans read integers. Series ids are
#: handed out in increasing order, so a run's ids are one range and a scan filtered on them
#: skips the row groups of other runs by their min/max. ``samples`` stays the same view.
SCHEMA_V3_LAYOUT = """
CREATE TABLE IF NOT EXISTS series (
    series_id INTEGER, run_id VARCHAR, source VARCHAR, entity VARCHAR, metric VARCHAR);
CREATE TABLE sample_points (series_id INTEGER, ts TIMESTAMP, value DOUBLE);
INSERT INTO series
    SELECT (row_number() OVER (ORDER BY first_ts, run_id, source, entity, metric))::INTEGER,
           run_id, source, entity, metric
    FROM (SELECT run_id, source, entity, metric, min(ts) AS first_ts
          FROM sample_values GROUP BY ALL);
INSERT INTO sample_points
    SELECT s.series_id, v.ts, v.value FROM sample_values v JOIN series s
        ON s.run_id IS NOT DISTINCT FROM v.run_id AND s.source IS NOT DISTINCT FROM v.source
       AND s.entity IS NOT DISTINCT FROM v.entity AND s.metric IS NOT DISTINCT FROM v.metric;
DROP VIEW samples;
DROP TABLE sample_values;
ALTER TABLE sample_points RENAME TO sample_values;
CREATE OR REPLACE VIEW samples AS
    SELECT s.run_id, v.ts, s.source, s.entity, s.metric, v.value
    FROM sample_values v JOIN series s USING (series_id);
"""


def apply_v3_layout(con: Any) -> None:
    """Move a version-2 ``sample_values`` (labels on every row) into ``series`` +
    ``sample_values(series_id, ts, value)``, in the caller's transaction. A long recording is
    millions of rows: this runs with DuckDB's default threads and memory and keeps row order
    (the time order compresses best), then restores the writer's settings."""
    threads, memory, order = con.execute(
        "SELECT current_setting('threads'), current_setting('memory_limit'), "
        "current_setting('preserve_insertion_order')"
    ).fetchall()[0]
    con.execute("RESET threads; RESET memory_limit; SET preserve_insertion_order = true")
    try:
        con.execute(SCHEMA_V3_LAYOUT)
    finally:
        con.execute(
            f"SET threads = {int(threads)}; SET memory_limit = '{memory}'; "
            f"SET preserve_insertion_order = {str(order).lower()}"
        )


def has_series(con: Any) -> bool:
    """Whether a database (a DuckDB or read connection) stores samples by series id (schema 3);
    an older file read as it is has only the ``samples`` view over labelled rows."""
    return has_table(con, "series")


def series_filter(con: Any, run_id: str, where: str = "") -> str:
    """SQL over ``sample_values`` selecting a run's series whose labels match ``where`` (SQL
    over ``series``' columns), or ``false`` when it has none yet. DuckDB runs it as a semi-join
    against the small dictionary, filtering the scan on the integer column (no label is joined
    to every value). A run's ids only grow, so its first id (a literal) lets the scan skip the
    row groups of earlier runs by their min/max, and series added later still match."""
    more = f" AND ({where})" if where else ""
    run = "'" + run_id.replace("'", "''") + "'"
    rows = con.execute(f"SELECT min(series_id) FROM series WHERE run_id = {run}{more}").fetchall()
    first = rows[0][0] if rows else None
    if first is None:
        return "false"
    return (
        f"series_id >= {int(first)} AND series_id IN "
        f"(SELECT series_id FROM series WHERE run_id = {run}{more})"
    )


def bucketed_values(con: Any, picked: str, times: Sequence[str]) -> str:
    """SQL of ``(series_id, k, value)`` rows of the series ``picked`` selects (see
    :func:`series_filter`) within the ``ts`` conditions ``times``, ``k`` being the bucket
    ``epoch_us(ts) // $bucket_us``. In spans (schema 4) the bucket is worked out once per
    tick in the small ``sample_ticks`` and joined by tick id, and the filter on ``series_id``
    lets the scan skip the row groups of other series by their min/max (each span is sorted
    by series); the writer's tables, not moved yet, are read as they are."""
    raw = " AND ".join([picked, *times])
    if not has_spans(con):
        return f"SELECT series_id, epoch_us(ts) // $bucket_us AS k, value FROM sample_values WHERE {raw}"
    tick_where = f"WHERE {' AND '.join(times)}" if times else ""
    return f"""SELECT p.series_id, t.k, p.value FROM sample_spans p
            JOIN (SELECT tick, epoch_us(ts) // $bucket_us AS k FROM sample_ticks {tick_where}) t
            USING (tick) WHERE {picked}
        UNION ALL SELECT series_id, epoch_us(ts) // $bucket_us, value FROM sample_moving
            WHERE {raw}
        UNION ALL SELECT series_id, epoch_us(ts) // $bucket_us, value FROM sample_recent
            WHERE {raw}"""


#: Layouts of one source remembered for reuse: a collector may alternate between a few (NVML's
#: field values come every other tick at a short interval).
LAYOUTS_KEPT = 4


class _SourceSeries:
    """One run's series of one source: (entity, metric) → id, and its recent batch layouts."""

    __slots__ = ("ids", "layouts")

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], int] = {}
        #: (entities, metrics, order, ids in that order) of recent batches, the latest first.
        self.layouts: list[tuple[Sequence[str], Sequence[str], np.ndarray, np.ndarray]] = []

    def known_layout(self, batch: Batch) -> tuple[np.ndarray, np.ndarray] | None:
        """(row order, ids in that order) of a recent batch with exactly these labels."""
        n = len(batch.metrics)
        for i, (entities, metrics, order, ids) in enumerate(self.layouts):
            if len(ids) == n and batch.metrics == metrics and batch.entities == entities:
                if i:
                    self.layouts.insert(0, self.layouts.pop(i))
                return order, ids
        return None

    def remember(self, batch: Batch, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cache the layout of ``batch`` (ids in its order); returns its (row order, ids)."""
        order = storage_order(batch.values)
        self.layouts.insert(0, (batch.entities, batch.metrics, order, ids[order]))
        del self.layouts[LAYOUTS_KEPT:]
        return order, self.layouts[0][3]


def storage_order(values: Sequence[float]) -> np.ndarray:
    """The order a layout's rows are stored in within a tick: by the values of the first batch
    of that layout. Rows of one tick have no order for readers, and DuckDB compresses runs of
    equal or similar values (the many zeros, flags and limits side by side) far better than a
    collector's order, which interleaves counters, rates and flags (about 15% of the file)."""
    return np.argsort(np.asarray(values, dtype=np.float64), kind="stable")


class SeriesIds:
    """Series ids of one writer connection (one writer per file, so ids never collide)."""

    def __init__(self) -> None:
        self._known: dict[_Key, _SourceSeries] = {}
        self._next_id: int | None = None
        #: Series added by the open transaction: (key, (entity, metric), id).
        self._pending: list[tuple[_Key, tuple[str, str], int]] = []

    def reset(self) -> None:
        """Forget everything (after a reopen): the file is the truth, read again on demand."""
        self._known.clear()
        self._next_id = None
        self._pending.clear()

    def commit(self) -> None:
        self._pending.clear()

    def rollback(self) -> None:
        """Drop what the failed transaction added; the file never got those ids."""
        if not self._pending:
            return
        for key, label, _ in self._pending:
            known = self._known.get(key)
            if known is not None:
                known.ids.pop(label, None)
                known.layouts.clear()
        self._next_id = min(i for *_, i in self._pending)
        self._pending.clear()

    def _source(self, con: Any, run_id: str, source: str) -> _SourceSeries:
        key = (run_id, source)
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = _SourceSeries()
            rows = con.execute(
                "SELECT entity, metric, series_id FROM series WHERE run_id = ? AND source = ?",
                [run_id, source],
            ).fetchall()
            known.ids.update(((e, m), int(i)) for e, m, i in rows)
        return known

    def ids(
        self, run_id: str, batches: Sequence[Batch], con: Any
    ) -> tuple[np.ndarray, list[np.ndarray], dict[str, np.ndarray] | None]:
        """The series id of every value of ``batches`` (concatenated, each batch's rows in its
        :func:`storage_order`), each batch's row order (apply it to its values), and the new
        series as columns for :meth:`insert` (None when every label is known). ``con`` is read
        only for what the cache lacks; new ids stay pending until :meth:`commit`."""
        parts = []
        orders = []
        new: list[tuple[int, str, str, str]] = []
        for b in batches:
            known = self._source(con, run_id, b.source)
            same = known.known_layout(b)
            if same is not None:
                orders.append(same[0])
                parts.append(same[1])
                continue
            get = known.ids.get
            found = [get(label) for label in zip(b.entities, b.metrics)]
            if None in found:
                for i, label in enumerate(zip(b.entities, b.metrics)):
                    if found[i] is None:
                        sid = known.ids.get(label)
                        if sid is None:
                            sid = self._new_id(con)
                            known.ids[label] = sid
                            self._pending.append(((run_id, b.source), label, sid))
                            new.append((sid, b.source, label[0], label[1]))
                        found[i] = sid
            order, ids = known.remember(b, np.array(found, dtype=np.int32))
            orders.append(order)
            parts.append(ids)
        columns = None
        if new:
            columns = {
                "series_id": np.array([n[0] for n in new], dtype=np.int32),
                "source": np.array([n[1] for n in new], dtype=object),
                "entity": np.array([n[2] for n in new], dtype=object),
                "metric": np.array([n[3] for n in new], dtype=object),
            }
        return (np.concatenate(parts) if len(parts) != 1 else parts[0]), orders, columns

    @staticmethod
    def insert(con: Any, run_id: str, new_series: dict[str, np.ndarray]) -> None:
        """Write the new series :meth:`ids` handed out (in the caller's transaction)."""
        con.execute(
            "INSERT INTO series SELECT series_id, ?, source, entity, metric FROM new_series",
            [run_id],
        )

    def _new_id(self, con: Any) -> int:
        if self._next_id is None:
            row = con.execute("SELECT coalesce(max(series_id), 0) FROM series").fetchall()
            self._next_id = int(row[0][0]) + 1
        sid = self._next_id
        self._next_id += 1
        return sid
