"""The recent window of a recording, in memory: what a live pass analyses instead of the file.

Fed snapshot by snapshot from the session's hub (the sampler thread only appends the snapshot to
a queue; the analysis thread does the rest), it keeps, per tick, the values of the metrics the
rules read (the host, process and step metrics and every metric that plays a role: the
accelerators', fabric ports' and mounts'; without accelerator parts no column reads) as a NumPy
array beside entity and metric columns
shared by every tick of the same shape. A pass loads the window into an in-memory database with
the store's public ``samples``, ``events`` and ``entities`` views, so the rules run unchanged,
do not wait for the store's next flush, and take nothing from the recording's own connection.

That database is attached to the recording's own DuckDB instance (a cursor of its own, whose
default database it is), not a second instance: each instance costs about 24 MB resident
(catalog, functions, buffer pool). After each load it is checkpointed, which compresses the
window about eightfold (a 5-minute window of 8 GPUs: 28 MB to 3.5 MB) and makes the rules'
scans faster, so the window shares the recording's memory limit without crowding its writes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np

from agent.analysis.frame import BASE_METRICS
from agent.analysis.frame_accel import accelerator_plan
from agent.catalog import CATALOG
from agent.catalog.roles import ROLES
from agent.model import Batch, Event
from agent.snapshot import Snapshot, TickValues

#: The store's public views over the same raw columns (agent/store.py), so ``build_frames``
#: and the rules read the recent window exactly as they read a file.
_SCHEMA = """
CREATE TABLE sample_values (
    run_id VARCHAR, ts TIMESTAMP, source VARCHAR, entity VARCHAR, metric VARCHAR, value DOUBLE);
CREATE TABLE event_log (run_id VARCHAR, ts TIMESTAMP, kind VARCHAR, entity VARCHAR,
                        detail VARCHAR);
CREATE TABLE entity_log (run_id VARCHAR, ts TIMESTAMP, source VARCHAR, entity VARCHAR,
                         attrs VARCHAR);
CREATE VIEW samples AS SELECT run_id, ts, source, entity, metric, value FROM sample_values;
CREATE VIEW events AS SELECT run_id, ts, kind, entity, detail FROM event_log;
CREATE VIEW entities AS
    SELECT run_id, source, entity, arg_max(attrs, ts) AS attrs,
           min(ts) AS first_seen, max(ts) AS last_seen
    FROM entity_log GROUP BY ALL;
"""
#: The private instance's cap, when there is no recording's instance to share: as small as the
#: agent's own DuckDB (a pass that does not fit degrades its window, see
#: ``LiveAnalysis.poll_safely``).
MEMORY_LIMIT = "32MB"
#: Each window's database on a shared instance gets a name of its own (``aw_recent_N``).
_NAMES = itertools.count(1)


@dataclass(frozen=True)
class _Shape:
    """One source's batch layout: which rows are kept, and their entity and metric columns."""

    entities: list[str]
    metrics: list[str]
    keep: np.ndarray
    kept_entities: np.ndarray
    kept_metrics: np.ndarray


@dataclass(frozen=True)
class _Layout:
    """The kept rows of one tick shape (every batch's): where they sit in the tick's values
    and their source, entity and metric columns; shared by every tick of that shape."""

    take: np.ndarray
    #: Which of the tick's batches keep any rows, and how many each (their batches' times
    #: are each tick's own).
    batches: list[int]
    #: Kept rows per batch that keeps any (their batches' times are each tick's own).
    sizes: np.ndarray
    sources: np.ndarray
    entities: np.ndarray
    metrics: np.ndarray


class _Tick:
    """One tick's kept values, and the times of its batches that kept any."""

    __slots__ = ("ts", "batch_ts", "layout", "values")

    def __init__(
        self, ts: float, batch_ts: np.ndarray, layout: _Layout, values: np.ndarray
    ) -> None:
        self.ts, self.batch_ts, self.layout, self.values = ts, batch_ts, layout, values


def _us(ts: float) -> int:
    return int(ts * 1_000_000)


class RecentWindow:
    """The last ``keep_s`` seconds of one run's analysed samples, events and entities.

    ``open_cursor`` gives a cursor of the recording's DuckDB instance (owned by the analysis
    thread); the window's database is attached there. Without it (or when it gives None) the
    window opens a private in-memory instance."""

    def __init__(
        self,
        run_id: str,
        keep_s: float,
        open_cursor: Callable[[], duckdb.DuckDBPyConnection | None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.keep_s = keep_s
        self._open_cursor = open_cursor
        #: The attached database's name (None: a private instance) and the cursor's own default.
        self.name: str | None = None
        self._home: str | None = None
        #: A release failed: the next load starts on a new window database.
        self._stale = False
        self.con = self._open()
        self._rows: deque[_Tick] = deque()
        #: The last tick shape's layout: (the hub's index it holds for, the batches' sources
        #: and sizes, the layout).
        self._layout: tuple[object, tuple[tuple[str, int], ...], _Layout] | None = None
        self._events: deque[Event] = deque()
        #: entity → (first seen ts, source, attributes as JSON): the ``entities`` view's input.
        self._attrs: dict[str, tuple[float, str, str]] = {}
        self._shapes: dict[str, _Shape] = {}
        self._analysed: frozenset[str] = frozenset()
        self._part_metrics: frozenset[str] = frozenset()
        self._accel_sources: frozenset[str] = frozenset()
        self._sources: frozenset[str] = frozenset()
        self.latest: float | None = None

    def _plan(self, sources: Iterable[str]) -> None:
        """Which metrics to keep: recomputed when a source not seen before sends a batch."""
        plan = accelerator_plan()
        # every metric that plays a role: the frames read accelerators' by role, and rules
        # such as the runtime-latency ones read their roles straight from ``samples``
        played = (m.name for role in ROLES for m in CATALOG.by_role(role))
        self._analysed = frozenset((*BASE_METRICS, *plan.metrics, *played))
        self._part_metrics = frozenset(
            (
                *BASE_METRICS,
                *(m for s in plan.sources if not s.slash_free for m in s.columns.values()),
            )
        )
        # only accelerators' parts are dropped: a fabric port (``ib:mlx5_0/1``) or a mount
        # (``mount:/data``) is an entity of its own, which the fabric and storage rules read
        self._accel_sources = frozenset(s.name for s in plan.sources)
        self._sources = frozenset(sources) | self._sources
        self._shapes.clear()
        self._layout = None

    def _shape(self, batch: Batch) -> _Shape:
        known = self._shapes.get(batch.source)
        if (
            known is not None
            and known.metrics == batch.metrics
            and known.entities == batch.entities
        ):
            return known
        analysed, parts = self._analysed, self._part_metrics
        whole = batch.source not in self._accel_sources
        keep = np.fromiter(
            (
                m in analysed and (whole or "/" not in e or m in parts)
                for e, m in zip(batch.entities, batch.metrics)
            ),
            dtype=bool,
            count=len(batch.metrics),
        )
        shape = _Shape(
            list(batch.entities),
            list(batch.metrics),
            keep,
            np.array(batch.entities, dtype=object)[keep],
            np.array(batch.metrics, dtype=object)[keep],
        )
        self._shapes[batch.source] = shape
        return shape

    def add(self, snap: Snapshot, flat: np.ndarray | None = None) -> None:
        """Take in one tick (called on the analysis thread, in tick order). ``flat``: every
        value of the tick in batch order, if the caller has it as an array already (the
        watches' :class:`~agent.analysis.watch_arrays.TickArrays`)."""
        if snap.batches and not {b.source for b in snap.batches} <= self._sources:
            self._plan(b.source for b in snap.batches)
        if not self._attrs and snap.entity_attrs:  # attributes sent before the analysis began
            owner = {e: b.source for b in snap.batches for e in (*b.entities, *b.entity_attrs)}
            for e, attrs in snap.entity_attrs.items():
                if e in owner:
                    self._attrs[e] = (snap.ts, owner[e], json.dumps(dict(attrs), default=str))
        for b in snap.batches:
            for e, attrs in b.entity_attrs.items():
                first = self._attrs.get(e)
                self._attrs[e] = (
                    first[0] if first else b.ts,
                    b.source,
                    json.dumps(dict(attrs), default=str),
                )
            if b.events:
                self._events.extend(b.events)
        layout = self._layout_of(snap)
        if len(layout.take):
            if flat is None or len(flat) != sum(len(b) for b in snap.batches):
                flat = _flat(snap.batches)
            batches = snap.batches
            kept = [batches[i].ts for i in layout.batches]
            self._rows.append(
                _Tick(snap.ts, np.array(kept, dtype=np.float64), layout, flat[layout.take])
            )
        self.latest = snap.ts
        self._trim(snap.ts - self.keep_s)

    def _layout_of(self, snap: Snapshot) -> _Layout:
        """The layout of ``snap``'s shape: the last one while the hub keeps its index (the
        sources' columns are the same) or the batches' columns compare equal."""
        values = snap.values
        index = values.index if isinstance(values, TickValues) else None
        sizes = tuple((b.source, len(b)) for b in snap.batches)
        last = self._layout
        if last is not None and index is not None and last[0] is index and last[1] == sizes:
            return last[2]
        offsets = np.cumsum([0, *(len(b) for b in snap.batches)])
        parts = [
            (i, b, self._shape(b), int(offsets[i]))
            for i, b in enumerate(snap.batches)
            if len(b) and self._shape(b).keep.any()
        ]
        counts = [int(shape.keep.sum()) for _, _, shape, _ in parts]
        layout = _Layout(
            take=_concat_int([at + np.flatnonzero(shape.keep) for _, _, shape, at in parts]),
            batches=[i for i, _, _, _ in parts],
            sizes=np.array(counts, dtype=np.int64),
            sources=np.repeat(np.array([b.source for _, b, _, _ in parts], dtype=object), counts),
            entities=_concat([shape.kept_entities for _, _, shape, _ in parts]),
            metrics=_concat([shape.kept_metrics for _, _, shape, _ in parts]),
        )
        if index is not None:
            self._layout = (index, sizes, layout)
        return layout

    def _trim(self, before: float) -> None:
        while self._rows and self._rows[0].batch_ts.max() < before:
            self._rows.popleft()
        while self._events and self._events[0].ts < before:
            self._events.popleft()

    @property
    def ticks(self) -> int:
        return len({t for r in self._rows for t in r.batch_ts.tolist()})

    def _open(self) -> duckdb.DuckDBPyConnection:
        """A connection whose default database is a new, empty window database."""
        con = self._open_cursor() if self._open_cursor is not None else None
        if con is None:
            con = duckdb.connect(":memory:", config={"threads": 1, "memory_limit": MEMORY_LIMIT})
            self.name = self._home = None
        else:
            self.name = f"aw_recent_{next(_NAMES)}"
            self._home = con.execute("SELECT current_database()").fetchall()[0][0]
            con.execute(f"ATTACH ':memory:' AS {self.name}")
            con.execute(f"USE {self.name}")
        con.execute(_SCHEMA)
        return con

    def load(self, start: float, end: float) -> None:
        """Fill the in-memory tables with ``[start, end)`` (a cursor of an instance the store
        replaced is replaced too, once per call)."""
        if self._stale:
            self._replace()
        try:
            self._fill(start, end)
        except duckdb.Error as exc:
            if self._stale or not _gone(exc):  # a failed checkpoint waits for the next load
                raise
            self._replace()
            self._fill(start, end)

    def _replace(self) -> None:
        self._discard()
        self.con = self._open()
        self._stale = False

    def _fill(self, start: float, end: float) -> None:
        """One statement per table, then a checkpoint that compresses the window."""
        chosen = [r for r in self._rows if r.batch_ts.max() >= start and r.batch_ts.min() < end]
        row_ts = _concat_float([np.repeat(r.batch_ts, r.layout.sizes) for r in chosen])
        inside = (row_ts >= start) & (row_ts < end)  # a tick's batches may straddle a bound
        window_samples = {  # noqa: F841 - read by DuckDB's replacement scan
            "ts": (row_ts[inside] * 1_000_000).astype(np.int64).astype("datetime64[us]"),
            "source": _concat([r.layout.sources for r in chosen])[inside],
            "entity": _concat([r.layout.entities for r in chosen])[inside],
            "metric": _concat([r.layout.metrics for r in chosen])[inside],
            "value": _concat_float([r.values for r in chosen])[inside],
        }
        con = self.con
        con.execute(
            "CREATE OR REPLACE TABLE sample_values AS SELECT $run AS run_id, ts, source, "
            "entity, metric, value FROM window_samples",
            {"run": self.run_id},
        )
        self._load_events([e for e in self._events if start <= e.ts < end])
        self._load_entities(self._attrs.items())
        try:
            con.execute("CHECKPOINT" if self.name is None else f"CHECKPOINT {self.name}")
        except duckdb.Error as exc:
            # A failed checkpoint invalidates the window's database (on a shared instance that
            # database alone: the recording's goes on); the next load starts a new one. It
            # fails for memory: say so, so the pass degrades its window like any other
            # out-of-memory pass.
            self._stale = True
            raise duckdb.OutOfMemoryException(f"recent window checkpoint: {exc}") from exc

    def _load_events(self, events: Sequence[Event]) -> None:
        window_events = {  # noqa: F841
            "ts": np.array([_us(e.ts) for e in events], dtype="datetime64[us]"),
            "kind": np.array([e.kind for e in events], dtype=object),
            "entity": np.array([e.entity for e in events], dtype=object),
            "detail": np.array([e.detail_json() for e in events], dtype=object),
        }
        self.con.execute("DELETE FROM event_log")
        if events:
            self.con.execute(
                "INSERT INTO event_log SELECT $run, ts, kind, entity, detail FROM window_events",
                {"run": self.run_id},
            )

    def _load_entities(self, items: Iterable[tuple[str, tuple[float, str, str]]]) -> None:
        rows = list(items)
        window_entities = {  # noqa: F841
            "ts": np.array([_us(ts) for _, (ts, _, _) in rows], dtype="datetime64[us]"),
            "source": np.array([s for _, (_, s, _) in rows], dtype=object),
            "entity": np.array([e for e, _ in rows], dtype=object),
            "attrs": np.array([a for _, (_, _, a) in rows], dtype=object),
        }
        self.con.execute("DELETE FROM entity_log")
        if rows:
            self.con.execute(
                "INSERT INTO entity_log SELECT $run, ts, source, entity, attrs "
                "FROM window_entities",
                {"run": self.run_id},
            )

    def release(self) -> None:
        """Give back a pass's memory until the next one: empty the window's tables and drop the
        frames' temporary tables (a pass rebuilds them all; between passes they held about
        10 MB of the instance's buffers, uncompressed)."""
        con = self.con
        try:
            temp = con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'temp'"
            ).fetchall()
            for (table,) in temp:
                con.execute(f"DROP TABLE IF EXISTS temp.main.{_quoted(table)}")
            for table in ("sample_values", "event_log", "entity_log"):
                con.execute(f"DELETE FROM {table}")
            con.execute("CHECKPOINT" if self.name is None else f"CHECKPOINT {self.name}")
        except duckdb.Error:  # never hides the pass's own outcome; the next load starts afresh
            self._stale = True

    def _discard(self) -> None:
        """Detach the window's database (its memory goes back to the instance) and close."""
        with contextlib.suppress(duckdb.Error):
            if self.name is not None:
                self.con.execute(f"USE {_quoted(self._home or 'memory')}")
                self.con.execute(f"DETACH {self.name}")
        with contextlib.suppress(duckdb.Error):
            self.con.close()

    def close(self) -> None:
        self._discard()


def _gone(exc: duckdb.Error) -> bool:
    """Whether ``exc`` says the window's database is no more: its instance was replaced (the
    store reopened its file) or invalidated, or the window's own database was invalidated."""
    return isinstance(exc, (duckdb.ConnectionException, duckdb.FatalException)) or (
        "invalidated" in str(exc)
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.array([], dtype=object)


def _concat_int(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.intp) if parts else np.array([], dtype=np.intp)


def _concat_float(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.array([], dtype=np.float64)


def _flat(batches: Sequence[Batch]) -> np.ndarray:
    """Every value of the batches in order, as one array."""
    return _concat_float([np.asarray(b.values, dtype=np.float64) for b in batches])
