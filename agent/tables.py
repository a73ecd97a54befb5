"""Whether a database has a table: readers tell a file's layout (its schema) by what it holds,
so a file written by an older agent is read as it is."""

from __future__ import annotations

from typing import Any


def has_table(con: Any, name: str) -> bool:
    """Whether the current database of ``con`` (a DuckDB or read connection) has table ``name``."""
    rows = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? "
        "AND database_name = current_database()",
        [name],
    ).fetchall()
    return bool(rows and rows[0][0])
