"""DuckDB store: one embedded file, versioned schema, a writer thread that flushes Arrow batches.

Physical tables are append-only; the public SQL interface is the views ``runs``, ``samples``,
``events``, ``entities`` and the ``findings`` table (documented in the README).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import duckdb
import numpy as np

from agent.errors import StoreError, StoreInUseError
from agent.model import SAMPLE_COLUMNS, Batch, Event, RunInfo

SCHEMA_VERSION = 1
DUCKDB_MAGIC = b"DUCK"
MAX_FLUSH_INTERVAL = 2.0
AGENT_DB_THREADS = 1
AGENT_DB_MEMORY = "32MB"
#: Checkpoint the WAL early: written rows stay in memory until a checkpoint.
AGENT_DB_CHECKPOINT = "4MB"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accelwatch_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS run_log (
    run_id VARCHAR, name VARCHAR, mode VARCHAR, pid INTEGER, cmdline VARCHAR[], cwd VARCHAR,
    host VARCHAR, started TIMESTAMP, ended TIMESTAMP, exit_code INTEGER, status VARCHAR,
    interval_s DOUBLE, tags VARCHAR, env VARCHAR, simulated BOOLEAN, scenario VARCHAR,
    logged TIMESTAMP);
CREATE TABLE IF NOT EXISTS sample_values (
    run_id VARCHAR, ts TIMESTAMP, source VARCHAR, entity VARCHAR, metric VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS event_log (
    run_id VARCHAR, ts TIMESTAMP, kind VARCHAR, entity VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS entity_log (
    run_id VARCHAR, ts TIMESTAMP, source VARCHAR, entity VARCHAR, attrs VARCHAR);
CREATE TABLE IF NOT EXISTS findings (
    run_id VARCHAR, rule VARCHAR, severity VARCHAR, entity VARCHAR,
    start_ts TIMESTAMP, end_ts TIMESTAMP, summary VARCHAR, evidence VARCHAR,
    next_step VARCHAR, live BOOLEAN, detected TIMESTAMP);
CREATE OR REPLACE VIEW runs AS
    SELECT * EXCLUDE (logged) FROM run_log QUALIFY row_number() OVER (
        PARTITION BY run_id ORDER BY logged DESC) = 1;
CREATE OR REPLACE VIEW samples AS
    SELECT run_id, ts, source, entity, metric, value FROM sample_values;
CREATE OR REPLACE VIEW events AS SELECT run_id, ts, kind, entity, detail FROM event_log;
CREATE OR REPLACE VIEW entities AS
    SELECT run_id, source, entity, arg_max(attrs, ts) AS attrs,
           min(ts) AS first_seen, max(ts) AS last_seen
    FROM entity_log GROUP BY ALL;
"""


def _us(ts: float) -> int:
    return int(ts * 1_000_000)


def _check_path(path: Path, *, must_exist: bool) -> None:
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a database file")
    if path.exists():
        if path.stat().st_size > 0:
            with path.open("rb") as fh:
                head = fh.read(12)
            if head[8:12] != DUCKDB_MAGIC:
                raise StoreError(
                    f"{path} is not an accelwatch/DuckDB database; refusing to touch it"
                )
        return
    if must_exist:
        raise StoreError(f"no database at {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(f"cannot create {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create {path}: directory {parent} is not writable")


def connect(path: str | os.PathLike[str], *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (or create, mode 0600) an accelwatch database with clear errors."""
    p = Path(path)
    try:
        _check_path(p, must_exist=read_only)
    except PermissionError as exc:
        raise StoreError(f"cannot access {p}: permission denied ({exc.filename})") from None
    existed = p.exists()
    if not existed and not read_only and not os.access(p.parent if str(p.parent) else ".", os.W_OK):
        raise StoreError(f"cannot create {p}: directory is not writable")
    old_umask = os.umask(0o077)
    try:
        con = duckdb.connect(str(p), read_only=read_only)
    except duckdb.Error as exc:
        msg = str(exc)
        if "lock" in msg.lower():
            raise StoreInUseError(
                f"{p} is in use by another accelwatch agent (one writer per database file); "
                "use another --db"
            ) from None
        if "not a valid DuckDB" in msg:
            raise StoreError(
                f"{p} is not an accelwatch/DuckDB database; refusing to touch it"
            ) from None
        raise StoreError(f"cannot open {p}: {msg.splitlines()[0]}") from None
    finally:
        os.umask(old_umask)
    if not existed:
        with contextlib.suppress(OSError):
            os.chmod(p, 0o600)
    # The agent shares the machine with the job it watches: one thread, a small buffer pool.
    con.execute(
        f"SET threads = {AGENT_DB_THREADS}; SET memory_limit = '{AGENT_DB_MEMORY}'; "
        f"SET checkpoint_threshold = '{AGENT_DB_CHECKPOINT}'"
    )
    try:
        _migrate(con, read_only=read_only, path=p)
    except BaseException:
        con.close()
        raise
    return con


def _migrate(con: duckdb.DuckDBPyConnection, *, read_only: bool, path: Path) -> None:
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "accelwatch_meta" in tables:
        row = con.execute(
            "SELECT value FROM accelwatch_meta WHERE key = 'schema_version'"
        ).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} was written by a newer accelwatch (schema {version}, this one reads "
                f"up to {SCHEMA_VERSION}); upgrade accelwatch"
            )
        if version == SCHEMA_VERSION:
            return
    elif tables:
        raise StoreError(
            f"{path} is a DuckDB database but not an accelwatch one; refusing to touch it"
        )
    if read_only:
        if not tables:
            raise StoreError(f"{path} holds no accelwatch data")
        return
    con.execute(_SCHEMA)
    con.execute(
        "INSERT OR REPLACE INTO accelwatch_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
    )
    con.execute("CHECKPOINT")


class Store:
    """Owns the write connection; ``submit`` never blocks the sampler.

    Batches go through a bounded queue to a writer thread that inserts them with
    ``INSERT ... SELECT`` from Arrow at least every ``flush_interval`` seconds, so ``kill -9``
    of the agent loses at most that much. When the queue is full the oldest tick is dropped
    and counted (``dropped_ticks``), so memory stays bounded whatever the disk does.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float = 1.0,
        max_pending_ticks: int = 300,
    ) -> None:
        if not 0 < flush_interval <= MAX_FLUSH_INTERVAL:
            raise ValueError(f"flush_interval must be in (0, {MAX_FLUSH_INTERVAL}]")
        self.path = Path(path)
        self.con = connect(self.path)
        self.flush_interval = flush_interval
        self._queue: queue.Queue[tuple[str, list[Batch]] | None] = queue.Queue(max_pending_ticks)
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self.rows_written = 0
        self.flushes = 0
        self.dropped_ticks = 0
        self.last_error: str | None = None

    # -- runs
    def write_run(self, run: RunInfo) -> None:
        """Append the run's current state; the ``runs`` view shows the latest per run."""
        with self._write_lock:
            self.con.execute(
                "INSERT INTO run_log VALUES (?, ?, ?, ?, ?, ?, ?, make_timestamp(?), "
                "make_timestamp(?), ?, ?, ?, ?, ?, ?, ?, make_timestamp(?))",
                [
                    run.run_id,
                    run.name,
                    run.mode,
                    run.pid,
                    run.cmdline,
                    run.cwd,
                    run.host,
                    _us(run.started),
                    None if run.ended is None else _us(run.ended),
                    run.exit_code,
                    run.status,
                    run.interval,
                    json.dumps(run.tags),
                    json.dumps(run.env),
                    run.simulated,
                    run.scenario,
                    _us(time.time()),
                ],
            )

    # -- samples
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._writer_loop, name="accelwatch-store", daemon=True
        )
        self._thread.start()

    def submit(self, run_id: str, batches: list[Batch]) -> None:
        """Queue one tick for writing; drop the oldest tick if the writer is behind."""
        while True:
            try:
                self._queue.put_nowait((run_id, batches))
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped_ticks += 1
                except queue.Empty:
                    pass

    def _writer_loop(self) -> None:
        pending: list[tuple[str, list[Batch]]] = []
        deadline = time.monotonic() + self.flush_interval
        stop = False
        while not stop:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
                if item is None:
                    stop = True
                else:
                    pending.append(item)
            except queue.Empty:
                pass
            if stop or time.monotonic() >= deadline:
                if pending:
                    self._flush_safely(pending)
                    pending = []
                deadline = time.monotonic() + self.flush_interval

    def _flush_safely(self, ticks: list[tuple[str, list[Batch]]]) -> None:
        try:
            self.write_ticks(ticks)
        except Exception as exc:  # keep sampling; report the failure once per kind
            self.last_error = f"{type(exc).__name__}: {exc}"

    def write_ticks(self, ticks: Iterable[tuple[str, list[Batch]]]) -> int:
        """Write ticks now (also used directly by tests and importers). Returns rows written."""
        by_run: dict[str, list[Batch]] = {}
        for run_id, batches in ticks:
            by_run.setdefault(run_id, []).extend(batches)
        total = 0
        with self._write_lock:
            self.con.begin()
            try:
                for run_id, batches in by_run.items():
                    total += self._insert(run_id, batches)
                self.con.commit()
            except BaseException:
                self.con.rollback()
                raise
        self.rows_written += total
        self.flushes += 1
        return total

    def _insert(self, run_id: str, batches: list[Batch]) -> int:
        columns = [b.to_columns() for b in batches if len(b)]
        n = 0
        if columns:
            tick_samples = {  # noqa: F841 - read by DuckDB's replacement scan
                name: np.concatenate([c[name] for c in columns]) for name in SAMPLE_COLUMNS
            }
            self.con.execute(
                "INSERT INTO sample_values SELECT ?, ts, source, entity, metric, value "
                "FROM tick_samples",
                [run_id],
            )
            n = len(tick_samples["value"])
        events = [e for b in batches for e in b.events]
        if events:
            self._insert_events(run_id, events)
        attrs = [(b.ts, b.source, ent, a) for b in batches for ent, a in b.entity_attrs.items()]
        if attrs:
            tick_entities = {  # noqa: F841
                "ts": np.array([_us(ts) for ts, *_ in attrs], dtype="datetime64[us]"),
                "source": np.array([s for _, s, _, _ in attrs], dtype=object),
                "entity": np.array([e for _, _, e, _ in attrs], dtype=object),
                "attrs": np.array(
                    [json.dumps(dict(a), default=str) for *_, a in attrs], dtype=object
                ),
            }
            self.con.execute(
                "INSERT INTO entity_log SELECT ?, ts, source, entity, attrs FROM tick_entities",
                [run_id],
            )
        return n

    def _insert_events(self, run_id: str, events: list[Event]) -> None:
        tick_events = {  # noqa: F841
            "ts": np.array([_us(e.ts) for e in events], dtype="datetime64[us]"),
            "kind": np.array([e.kind for e in events], dtype=object),
            "entity": np.array([e.entity for e in events], dtype=object),
            "detail": np.array([e.detail_json() for e in events], dtype=object),
        }
        self.con.execute(
            "INSERT INTO event_log SELECT ?, ts, kind, entity, detail FROM tick_events", [run_id]
        )

    def write_events(self, run_id: str, events: list[Event]) -> None:
        """Write events now, outside the tick queue (run start/end, agent warnings)."""
        with self._write_lock:
            self._insert_events(run_id, events)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for another thread (TUI history, live analysis) on the same database."""
        return self.con.cursor()

    def close_writer(self) -> None:
        """Flush everything queued and stop the writer thread; the connection stays open."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Flush everything queued, stop the writer, checkpoint and close."""
        self.close_writer()
        with self._write_lock, contextlib.suppress(duckdb.Error):
            self.con.execute("CHECKPOINT")
        self.con.close()
