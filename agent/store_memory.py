"""Give back the recording instance's cache of file blocks after a checkpoint.

DuckDB keeps every block of the database file it has read or written in its buffer pool, up
to the memory limit (32 MB for the agent), and evicts only under pressure. The writer reads
hardly any of them again (flushes append, a move reads its hour once), so the cache grows for
minutes and stays: ~5 MB of anonymous memory after 5 minutes at 8 GPUs. Lowering the limit for
an instant makes DuckDB evict those blocks (it re-reads them from the file, or the OS page
cache, if ever asked again); the limit is back at once.

The floor keeps what is not a cached file block (the live analysis' in-memory window and any
running statement's memory) plus a margin, so nothing is spilled to the temp directory and a
statement running beside it is not starved.
"""

from __future__ import annotations

import time

import duckdb

#: What the floor leaves above the memory that is not cached file blocks.
RELEASE_MARGIN_BYTES = 4 * 2**20
#: Below this much cached file data a release is not worth its statements.
RELEASE_MIN_CACHED_BYTES = 2 * 2**20
#: Tries, and the pause between them, of the ``SET`` that puts the limit back. Under the floor
#: that statement can itself run out of memory when a statement beside it (a live-analysis
#: pass) holds what the margin left; the limit would then stay at the floor, every later
#: statement would fail for memory and every later release would leave "someone else's" limit
#: alone. It succeeds once the other statement ends or fails (2 of 4,286 releases needed a
#: second try in a stress of back-to-back releases beside passes; docs/benchmarks.md).
RESTORE_TRIES = 200
RESTORE_PAUSE_S = 0.005


def memory_limit_text(con: duckdb.DuckDBPyConnection) -> str:
    """The instance's memory limit as DuckDB shows it (``30.5 MiB`` for ``32MB``)."""
    return str(con.execute("SELECT current_setting('memory_limit')").fetchone()[0])  # type: ignore[index]


def release_file_cache(con: duckdb.DuckDBPyConnection, memory_limit: str, shown: str) -> int:
    """Evict cached blocks of the database file; returns the bytes DuckDB reported freed.

    ``memory_limit`` is the instance's configured setting and ``shown`` how DuckDB shows it
    (:func:`memory_limit_text` at connect): a limit someone else changed since is left alone,
    so is the cache. The limit is restored before returning, also on error. Raises what
    DuckDB raises; the caller counts it and goes on recording."""
    if memory_limit_text(con) != shown:
        return 0
    rows = con.execute(
        "SELECT sum(memory_usage_bytes) FILTER (WHERE tag = 'BASE_TABLE'),"
        " sum(memory_usage_bytes) FILTER (WHERE tag <> 'BASE_TABLE') FROM duckdb_memory()"
    ).fetchone()
    cached, other = (int(v or 0) for v in (rows or (0, 0)))
    if cached < RELEASE_MIN_CACHED_BYTES:
        return 0
    floor = other + RELEASE_MARGIN_BYTES
    try:
        con.execute(f"SET memory_limit = '{floor}B'")
    finally:
        _restore_limit(con, memory_limit)
    after = con.execute(
        "SELECT sum(memory_usage_bytes) FROM duckdb_memory() WHERE tag = 'BASE_TABLE'"
    ).fetchone()
    return max(0, cached - int((after or (0,))[0] or 0))


def _restore_limit(con: duckdb.DuckDBPyConnection, memory_limit: str) -> None:
    """Put the limit back, trying again while DuckDB is out of memory (``RESTORE_TRIES``)."""
    for attempt in range(RESTORE_TRIES):
        try:
            con.execute(f"SET memory_limit = '{memory_limit}'")
            return
        except duckdb.OutOfMemoryException:
            if attempt == RESTORE_TRIES - 1:
                raise
            time.sleep(RESTORE_PAUSE_S)
