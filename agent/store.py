"""DuckDB store: one embedded file, versioned schema, private files, and the run's liveness.

Physical tables are append-only; the public SQL interface is the views ``runs``, ``samples``,
``events``, ``entities`` and the ``findings`` table (documented in the README). The writer
(:class:`Store`, in :mod:`agent.store_writer`) is re-exported here.

Every file the agent creates (the database, its ``.wal``, DuckDB's spill directory
``<db>.tmp``) is private from the first byte: :func:`connect` sets the process umask to 0o077
once; a launched job gets the user's own umask back through :func:`user_umask`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from agent.errors import StoreCorruptError, StoreError, StoreInUseError
from agent.series import apply_v3_layout, has_series
from agent.store_buckets import SCHEMA_V6_BUCKET_NULLS, apply_v5_buckets, has_buckets
from agent.store_span_rows import SPAN_ROWS_TABLE, apply_v6_rows, has_span_rows
from agent.store_spans import SCHEMA_V4_LAYOUT, SPAN_TABLES, has_spans
from agent.store_views import _V1_RUNS_VIEW, RUNS_V2_COLUMNS, RUNS_VIEW  # noqa: F401

SCHEMA_VERSION = 6
DUCKDB_MAGIC = b"DUCK"
#: A DuckDB file is at least its header blocks (3 x 4 KiB); anything shorter is truncated.
DUCKDB_MIN_SIZE = 3 * 4096
MAX_FLUSH_INTERVAL = 2.0
#: How often the agent commits what it sampled: ``kill -9`` of the agent loses at most this.
#: DuckDB's cost is per statement (~1 ms for an ``INSERT`` of any size), not per row, so two
#: ticks per commit at 1 Hz halve the writer's CPU; readers see a live run up to 2 s back.
DEFAULT_FLUSH_INTERVAL = 2.0
#: A writer checksums every block of an existing file up to this size before recording.
DEEP_CHECK_MAX_BYTES = 2 * 2**30
AGENT_DB_THREADS = 1
AGENT_DB_MEMORY = "32MB"
#: Reading (``report``, ``view``, ``sql``) runs beside no job: every core (DuckDB's default
#: threads), not the recorder's one thread and 32 MB. Its memory is bounded all the same:
#: DuckDB keeps every block it read in its buffer pool up to the limit (a 24 h recording is
#: ~1 GB), while a reader scans each block only a few times and the OS caches the file anyway.
READER_DB_MEMORY = "256MB"
READER_DB_CONFIG: dict[str, Any] = {"memory_limit": READER_DB_MEMORY}
#: The writer checkpoints the WAL itself once it passes this size (written rows stay in memory
#: until a checkpoint); DuckDB's own auto-checkpoint is off, since a failed auto-checkpoint
#: invalidates the whole database instance.
AGENT_DB_CHECKPOINT_BYTES = 4 * 2**20
#: Block size of a new database file. DuckDB gives every table (and each checkpoint's tail of a
#: growing one) blocks of its own: at DuckDB's 256 KiB default, a 10-minute recording's ten
#: small tables and partial blocks are a fifth of its file. 64 KiB keeps the samples' segments
#: as well compressed; any DuckDB reads the file (the size is in its header).
NEW_FILE_BLOCK_SIZE = 64 * 1024
#: A run whose heartbeat is older than this, with no agent holding the file, is ``lost``.
HEARTBEAT_STALE_S = 5 * MAX_FLUSH_INTERVAL

_SCHEMA_V1 = """
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
CREATE OR REPLACE VIEW samples AS
    SELECT run_id, ts, source, entity, metric, value FROM sample_values;
CREATE OR REPLACE VIEW events AS SELECT run_id, ts, kind, entity, detail FROM event_log;
CREATE OR REPLACE VIEW entities AS
    SELECT run_id, source, entity, arg_max(attrs, ts) AS attrs,
           min(ts) AS first_seen, max(ts) AS last_seen
    FROM entity_log GROUP BY ALL;
"""

#: Version 2: who records each run (host, pid) and its heartbeat, so a reader can tell a run
#: whose agent died (``kill -9``) from one still recording; ``lost_ticks`` counts what a store
#: failure (disk full) cost. New ``runs`` columns come after the documented ones.
_SCHEMA_V2 = (
    """
ALTER TABLE run_log ADD COLUMN IF NOT EXISTS agent_host VARCHAR;
ALTER TABLE run_log ADD COLUMN IF NOT EXISTS agent_pid INTEGER;
ALTER TABLE run_log ADD COLUMN IF NOT EXISTS lost_ticks BIGINT;
CREATE TABLE IF NOT EXISTS run_heartbeat (
    run_id VARCHAR, heartbeat TIMESTAMP, last_sample TIMESTAMP);
"""
    + RUNS_VIEW
)

#: Version 3 (per-operation traces): one row per operation of an imported pipeline /
#: data-parallel trace (``accelwatch import``), so the straggler rules can compare a rank's
#: compute ops with its peers' of the same pipeline stage. ``ts`` is the op's start on the
#: run's time axis; ``duration`` is in seconds. The view ``ops`` is the public interface.
_SCHEMA_V3_OPS = """
CREATE TABLE IF NOT EXISTS op_trace (
    run_id VARCHAR, ts TIMESTAMP, rank INTEGER, dp_rank INTEGER, stage INTEGER, step BIGINT,
    optype VARCHAR, duration DOUBLE);
CREATE OR REPLACE VIEW ops AS
    SELECT run_id, ts, rank, dp_rank, stage, step, optype, duration FROM op_trace;
"""


def ensure_op_trace(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``op_trace``/``ops`` if missing: the block is additive and idempotent, so a
    schema-3 file written before it existed gets it from the first import of an op trace."""
    con.execute(_SCHEMA_V3_OPS)


#: Version 3, experiment tracking: what the job's own ``accelwatch`` client reports — logged
#: metrics per rank and step, and the run's config and tags (JSON values, latest per key).
_SCHEMA_V3_TRACKING = """
CREATE TABLE IF NOT EXISTS train_metric_values (
    run_id VARCHAR, ts TIMESTAMP, rank INTEGER, step BIGINT, name VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS run_setting_log (
    run_id VARCHAR, ts TIMESTAMP, kind VARCHAR, rank INTEGER, key VARCHAR, value VARCHAR);
CREATE OR REPLACE VIEW train_metrics AS
    SELECT run_id, ts, rank, step, name, value FROM train_metric_values;
CREATE OR REPLACE VIEW run_config AS
    SELECT run_id, key, arg_max(value, ts) AS value FROM run_setting_log
    WHERE kind = 'config' GROUP BY run_id, key;
CREATE OR REPLACE VIEW run_tags AS
    SELECT run_id, key, arg_max(value, ts) AS value FROM run_setting_log
    WHERE kind = 'tag' GROUP BY run_id, key;
"""

# -- private files -------------------------------------------------------------------------

_umask_lock = threading.Lock()
_user_umask: int | None = None


def make_files_private() -> None:
    """Set the process umask to 0o077 (once), remembering the user's for launched jobs."""
    global _user_umask
    with _umask_lock:
        if _user_umask is None:
            _user_umask = os.umask(0o077)


def user_umask() -> int:
    """The umask the user started accelwatch with (what a launched job must get)."""
    with _umask_lock:
        if _user_umask is not None:
            return _user_umask
        current = os.umask(0o022)
        os.umask(current)
        return current


def temp_directory(path: Path) -> Path:
    """DuckDB's spill directory for ``path``: ``<db>.tmp``, created 0700 by us."""
    return path.with_name(path.name + ".tmp")


def close_writable(con: duckdb.DuckDBPyConnection, path: str | os.PathLike[str]) -> None:
    """Close a read-write connection from :func:`connect` and remove its spill directory when
    nothing spilled (``rmdir`` leaves a non-empty one): a closed file has nothing beside it."""
    con.close()
    with contextlib.suppress(OSError):
        temp_directory(Path(path)).rmdir()


def _private_temp_dir(path: Path) -> str | None:
    tmp = temp_directory(path)
    try:
        tmp.mkdir(mode=0o700, exist_ok=True)
        os.chmod(tmp, 0o700)
    except OSError:
        return None
    return str(tmp)


# -- opening -------------------------------------------------------------------------------


def _us(ts: float) -> int:
    return int(ts * 1_000_000)


def _check_path(path: Path, *, must_exist: bool) -> None:
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a database file")
    if path.exists():
        size = path.stat().st_size
        if size > 0:
            with path.open("rb") as fh:
                head = fh.read(12)
            if head[8:12] != DUCKDB_MAGIC:
                raise StoreError(
                    f"{path} is not an accelwatch/DuckDB database; refusing to touch it"
                )
            if size < DUCKDB_MIN_SIZE:
                raise StoreCorruptError(_corrupt(path, f"truncated to {size} bytes"))
        return
    if must_exist:
        raise StoreError(f"no database at {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(f"cannot create {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create {path}: directory {parent} is not writable")


def _corrupt(path: Path, why: str) -> str:
    return (
        f"{path} is damaged ({why}); accelwatch will not read or write it "
        "(restore a copy, or record into another --db)"
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def connect(path: str | os.PathLike[str], *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (or create, mode 0600) an accelwatch database with clear errors.

    A damaged file (truncated, bad header, a block DuckDB cannot read) is a one-line
    :class:`StoreCorruptError` here, before any command uses it."""
    p = Path(path)
    try:
        _check_path(p, must_exist=read_only)
    except PermissionError as exc:
        raise StoreError(f"cannot access {p}: permission denied ({exc.filename})") from None
    existed = p.exists()
    make_files_private()
    config: dict[str, Any] = dict(READER_DB_CONFIG)
    made_tmp = None
    if not read_only:
        config["threads"] = AGENT_DB_THREADS
        config["memory_limit"] = AGENT_DB_MEMORY
        # Appends need not keep row order within a statement: less memory per insert.
        config["preserve_insertion_order"] = False
        made_tmp = None if temp_directory(p).exists() else temp_directory(p)
        tmp = _private_temp_dir(p)
        if tmp is not None:
            config["temp_directory"] = tmp
        config["checkpoint_threshold"] = "1TB"  # the writer checkpoints itself
        # DuckDB's async I/O pool (8 threads) serves Parquet/CSV reads only, never the agent's
        # own file: none saves 8 threads and ~2.5 MB resident (helper E, issue 14).
        config["async_threads"] = 0
        if not existed:
            config["default_block_size"] = str(NEW_FILE_BLOCK_SIZE)
    try:
        try:
            con = duckdb.connect(str(p), read_only=read_only, config=config)
        except duckdb.Error as exc:
            raise _open_error(p, exc) from None
        if not existed:
            with contextlib.suppress(OSError):
                os.chmod(p, 0o600)
        try:
            deep = not read_only and existed and p.stat().st_size <= DEEP_CHECK_MAX_BYTES
            _migrate(con, read_only=read_only, path=p)
            _verify(con, p, deep=deep)
        except duckdb.Error as exc:
            con.close()
            raise _open_error(p, exc) from None
        except BaseException:
            con.close()
            raise
    except BaseException as exc:
        if made_tmp is not None:  # leave nothing behind a refused file
            with contextlib.suppress(OSError):
                made_tmp.rmdir()
        if not existed and not isinstance(exc, StoreInUseError):  # nor a half-made new one
            for leftover in (p, p.with_name(p.name + ".wal")):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        raise
    return con


def _open_error(p: Path, exc: duckdb.Error) -> StoreError:
    msg = _first_line(exc)
    low = str(exc).lower()
    if "corrupt" in low or "checksum" in low:
        return StoreCorruptError(_corrupt(p, msg))
    if "could not set lock" in low or "conflicting lock" in low:
        return StoreInUseError(
            f"{p} is in use by another accelwatch agent (one writer per database file); "
            "use another --db"
        )
    if "not a valid duckdb" in low:
        return StoreError(f"{p} is not an accelwatch/DuckDB database; refusing to touch it")
    if "permission denied" in low:
        return StoreError(f"cannot open {p}: permission denied")
    if "no space left" in low:
        return StoreError(f"cannot write {p}: no space left on device")
    return StoreCorruptError(_corrupt(p, msg))


def _verify(con: duckdb.DuckDBPyConnection, path: Path, *, deep: bool) -> None:
    """Read what commands read first, so damage shows here and not as a traceback later.

    Every table's catalog entry and the run table are read (cheap); ``deep`` (a writer about
    to record into an existing file) reads every column of every table, which makes DuckDB
    load and checksum each block: recording into a damaged file would write samples that
    can never be read back. A file shorter than the blocks in use is truncated (free blocks
    at the end may legitimately be cut off)."""
    row = con.execute(
        "SELECT block_size, used_blocks FROM pragma_database_size() "
        "WHERE database_name = current_database()"
    ).fetchone()
    if row is not None:
        expected = DUCKDB_MIN_SIZE + int(row[0]) * int(row[1])
        size = path.stat().st_size
        if size < expected:
            raise StoreCorruptError(_corrupt(path, f"truncated: {size} of {expected} bytes"))
    con.execute("SELECT count(*), max(logged) FROM run_log").fetchall()
    tables = ["event_log", "entity_log", "findings"]
    tables += SPAN_TABLES if has_spans(con) else ["sample_values"]
    if has_series(con):
        tables.append("series")
    for table in tables:
        con.execute(f"SELECT count(*) FROM {table}").fetchall()
    if deep:
        for table in ["run_log", *tables]:
            # hash() reads every value: min() of a numeric column comes from block statistics
            con.execute(f"SELECT bit_xor(hash(COLUMNS(*))) FROM {table}").fetchall()


def _migrate(con: duckdb.DuckDBPyConnection, *, read_only: bool, path: Path) -> None:
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    version = 0
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
        if version == SCHEMA_VERSION and (read_only or SPAN_ROWS_TABLE in tables):
            if not read_only:
                con.execute(RUNS_VIEW)
            return
    elif tables:
        raise StoreError(
            f"{path} is a DuckDB database but not an accelwatch one; refusing to touch it"
        )
    if read_only:
        if not tables:
            raise StoreError(f"{path} holds no accelwatch data")
        return  # an older file is read as it is (see RUNS_V2_COLUMNS)
    con.begin()
    try:
        if version < 1:
            con.execute(_SCHEMA_V1)
            con.execute(_V1_RUNS_VIEW)
        if version < 2:
            con.execute(_SCHEMA_V2)
        con.execute(RUNS_VIEW)  # a file of before Dec 2026: its view read one updated row
        # Version 3's blocks each apply only what a file lacks (a file written while version 3
        # was being assembled may hold some of them).
        con.execute(_SCHEMA_V3_OPS)
        con.execute(_SCHEMA_V3_TRACKING)
        if not has_series(con):
            apply_v3_layout(con)
        had_spans = has_spans(con)
        if not had_spans:  # version 4: the writer's rows are moved into spans later
            con.execute(SCHEMA_V4_LAYOUT)
        if not has_buckets(con):  # version 5: buckets of the analysed series, from moves on
            apply_v5_buckets(con, had_spans=had_spans)
        if not has_span_rows(con):  # version 6: the spans' values scaled, NULLs counted
            apply_v6_rows(con)
            con.execute(SCHEMA_V6_BUCKET_NULLS)
        con.execute(
            "INSERT OR REPLACE INTO accelwatch_meta VALUES ('schema_version', ?)",
            [str(SCHEMA_VERSION)],
        )
        con.commit()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.rollback()
        raise
    con.execute("CHECKPOINT")


# -- liveness of a recorded run ------------------------------------------------------------


def this_host() -> str:
    return socket.gethostname()


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return float(value)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (zombies count as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[-1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def effective_status(
    row: Mapping[str, Any], now: float | None = None, *, locked: bool = False
) -> str:
    """A run's status as a reader should show it: ``lost`` for a ``running`` run whose agent
    is gone, else the recorded status (``running``, ``finished``, ``stopped``, ``incomplete``).

    ``row`` is a ``runs`` row as a mapping (``status``, ``agent_host``, ``agent_pid``,
    ``heartbeat``; the last three may be missing in a version-1 file). ``locked``: the reader
    knows an agent holds the database file (it went through the agent's socket, or opening
    read-only failed with "in use"). The agent is gone when it ran on this host and its pid is
    not alive, or when its heartbeat (written every few seconds) is older than
    :data:`HEARTBEAT_STALE_S` and nothing holds the file."""
    status = str(row.get("status") or "")
    if status != "running":
        return status
    now = time.time() if now is None else now
    heartbeat = _epoch(row.get("heartbeat"))
    stale = heartbeat is None or now - heartbeat > HEARTBEAT_STALE_S
    pid, host = row.get("agent_pid"), row.get("agent_host")
    if pid and host == this_host():
        if not pid_alive(int(pid)):
            return "lost"
        return "lost" if stale and not locked and pid != os.getpid() else "running"
    return "lost" if stale and not locked else "running"


def list_runs(
    con: duckdb.DuckDBPyConnection,
    *,
    now: float | None = None,
    locked: bool = False,
    where: str = "",
    params: list[Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``runs`` (ordered by start) as dicts, ``status`` replaced by
    :func:`effective_status` (``recorded_status`` keeps the stored one). A version-1 file gets
    the schema-2 columns as None; a lost run's ``last_sample`` falls back to its newest sample."""
    cur = con.execute(f"SELECT * FROM runs {where} ORDER BY started", params or [])
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    for r in rows:
        for c in RUNS_V2_COLUMNS:
            r.setdefault(c, None)
        r["recorded_status"] = r["status"]
        r["status"] = effective_status(r, now, locked=locked)
        if r["status"] == "lost":  # the heartbeat's last_sample trails by up to a beat
            got = con.execute(
                "SELECT max(ts) FROM samples WHERE run_id = ?", [r["run_id"]]
            ).fetchone()
            if got and got[0] is not None:
                r["last_sample"] = got[0]
    return rows


from agent.store_writer import Store  # noqa: E402  (re-export; the writer needs connect)

__all__ = [
    "SCHEMA_VERSION",
    "Store",
    "connect",
    "effective_status",
    "list_runs",
    "make_files_private",
    "user_umask",
]
