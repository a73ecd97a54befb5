"""At close, a short run's file rewritten without the free blocks its last move left.

The last move into spans frees the blocks of the rows it moved, in the middle of the file (an
hour of them at most): most of a short run's file, a few percent of a day's. A fresh copy of
such a small file holds only what is in use.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import duckdb

#: At close, a file at most this big whose free blocks are at least :data:`REWRITE_FREE_SHARE`
#: of it is rewritten into a fresh file: the last move leaves the blocks of the rows it moved
#: free in the middle of the file (an hour of them at most), which is most of a short run's
#: file (a 10-minute run: 10.9 B a value, 4 B rewritten) and a few percent of a day's.
REWRITE_MAX_BYTES = 128 * 2**20
REWRITE_FREE_SHARE = 0.2


def rewrite_if_worth_it(con: Any, path: Path) -> bool:
    """Rewrite the (checkpointed) database ``con`` has open at ``path`` into a fresh file and
    put it in place, when it is small and mostly free blocks. The copy is private from its
    first byte (the agent's umask), checked table by table, synced, then renamed over the
    original while ``con`` still holds the original's lock (so no other writer can slip in
    between). Returns whether it did; on any failure the original stays as it was and the
    copy is removed (the caller says so)."""
    row = con.execute(
        "SELECT block_size, total_blocks, free_blocks FROM pragma_database_size() "
        "WHERE database_name = current_database()"
    ).fetchone()
    if row is None or not row[1] or row[2] / row[1] < REWRITE_FREE_SHARE:
        return False
    if path.stat().st_size > REWRITE_MAX_BYTES:
        return False
    fresh = path.with_name(path.name + ".compact")
    leftovers = (fresh, fresh.with_name(fresh.name + ".wal"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    (name,) = con.execute("SELECT current_database()").fetchone()
    tables = [
        t
        for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
    ]
    (order,) = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()
    literal = "'" + str(fresh).replace("'", "''") + "'"
    try:
        con.execute("SET preserve_insertion_order = true")  # the spans' order is their size
        con.execute(f"ATTACH {literal} AS aw_compact (BLOCK_SIZE {int(row[0])})")
        try:
            con.execute(f'COPY FROM DATABASE "{name}" TO aw_compact')
            for table in tables:
                (a,) = con.execute(f'SELECT count(*) FROM "{name}".main."{table}"').fetchone()
                (b,) = con.execute(f'SELECT count(*) FROM aw_compact.main."{table}"').fetchone()
                if a != b:
                    raise duckdb.InternalException(f"rewrite: {table} has {b} of {a} rows")
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
    return True
