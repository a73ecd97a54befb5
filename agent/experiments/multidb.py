"""Several databases read as one: the per-rank or per-node files of one job, or a directory of
experiments (``--db 'nodes/*.duckdb'``, ``--db a.duckdb --db b.duckdb``).

Each file is checked exactly as a single reader checks it (:func:`agent.store.connect`,
read-only: damaged, foreign or newer files are refused in one line), then ATTACHed read-only to
an in-memory DuckDB. There, views (of that in-memory database, so every cursor sees them)
``runs``, ``samples``, ``events``, ``entities`` and ``findings``, and every other table or view
with a ``run_id`` column that some file has (the client's ``run_config``, an op trace...), are
the UNION ALL BY NAME of every file's. ``runs`` gains a trailing ``db_path``
column. Every reader (report, analysis, the TUI) then works unchanged over the union, because
they only ever read those views. Nothing is written: no file, no spill directory.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import duckdb

from agent.errors import StoreError, StoreInUseError, UsageError

if TYPE_CHECKING:
    from agent.runs import LocalReadConnection

#: The views every reader queries; a union of each is built over the attached files.
PUBLIC_VIEWS = ("runs", "samples", "events", "entities", "findings")
#: Files a glob may match beside a database that are not databases.
_NOT_DATABASES = (".wal", ".sock", ".tmp", ".lock")
_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_db_specs(specs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The database paths named by ``--db`` values: each a path, a directory (its ``*.duckdb``
    files) or a glob (expanded here, so a quoted pattern works without a shell; ``**``
    recurses). An existing path is taken as it is even if it contains glob characters; a
    pattern matching nothing is an error; the same file named twice is read once."""
    if isinstance(specs, str | os.PathLike):
        specs = [specs]
    out: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        text = os.path.expanduser(os.fspath(spec))
        if os.path.isdir(text):  # a directory: the databases in it
            matches = sorted(glob.glob(os.path.join(glob.escape(text), "*.duckdb")))
            if not matches:
                raise StoreError(f"no *.duckdb database in directory {os.fspath(spec)}")
        elif os.path.exists(text) or not _GLOB_CHARS.search(text):
            matches = [text]
        else:
            matches = sorted(
                m
                for m in glob.glob(text, recursive=True)
                if os.path.isfile(m) and not m.endswith(_NOT_DATABASES)
            )
            if not matches:
                raise StoreError(f"no database matches {os.fspath(spec)!r}")
        for m in matches:
            key = os.path.realpath(m)
            if key not in seen:
                seen.add(key)
                out.append(m)
    if not out:
        raise UsageError("no database given (--db PATH or --db 'GLOB')")
    return out


def db_label(paths: Sequence[str]) -> str:
    """How messages name a set of databases: the path, or the first and how many more."""
    if len(paths) == 1:
        return paths[0]
    return f"{paths[0]} (+{len(paths) - 1} more databases)"


def _stderr(message: str) -> None:
    print(f"accelwatch: {message}", file=sys.stderr, flush=True)


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def attach_read_only(
    paths: Sequence[str], warn: Callable[[str], None] = _stderr
) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory DuckDB with each of ``paths`` checked and attached read-only (as
    ``aw_db0``, ``aw_db1``...), and the paths attached. A file an agent is recording into
    cannot be attached (DuckDB allows no reader beside a writer): it is skipped with one line
    naming it, unless nothing else is left."""
    from agent.store import connect

    con = duckdb.connect(":memory:", config={"temp_directory": ""})  # never spill to ./.tmp
    attached: list[str] = []
    busy: list[str] = []
    try:
        for path in paths:
            try:
                connect(path, read_only=True).close()  # the single reader's checks, one line
                con.execute(f"ATTACH {_text(path)} AS aw_db{len(attached)} (READ_ONLY)")
            except StoreInUseError:
                busy.append(path)
                continue
            except duckdb.Error as exc:
                if "lock" in str(exc).lower():
                    busy.append(path)
                    continue
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise StoreError(f"cannot read {path}: {first}") from None
            attached.append(path)
        if not attached:
            raise StoreInUseError(
                f"{db_label(list(paths))}: every database is being recorded; read one alone "
                f"(--db {paths[0]}) to go through its agent"
            )
    except BaseException:
        con.close()
        raise
    for path in busy:
        warn(f"skipping {path}: it is being recorded (read it alone with --db {path})")
    return con, attached


def union_views(
    con: duckdb.DuckDBPyConnection, paths: Sequence[str], warn: Callable[[str], None] = _stderr
) -> None:
    """Create the public views over every attached file. A run found in several files (a copy,
    or a merged file globbed with its inputs) is read from the first file only, said once."""
    aliases = [f"aw_db{i}" for i in range(len(paths))]
    present: dict[str, set[str]] = {}
    # Every table or view holding per-run rows (a ``run_id`` column), so a table another part
    # of accelwatch adds (an op trace, the client's config) is read over all files too; not
    # those keyed by a file's own ids (``series_id``), which mean nothing across files.
    for db, name in con.execute(
        "SELECT database_name, table_name FROM duckdb_columns() WHERE schema_name = 'main' "
        "GROUP BY ALL HAVING bool_or(column_name = 'run_id') "
        "AND NOT bool_or(column_name = 'series_id')"
    ).fetchall():
        present.setdefault(name, set()).add(db)
    owner: dict[str, int] = {}
    skip: dict[int, list[str]] = {}
    for i, alias in enumerate(aliases):
        for (run_id,) in con.execute(f"SELECT DISTINCT run_id FROM {alias}.runs").fetchall():
            if run_id in owner:
                skip.setdefault(i, []).append(run_id)
                warn(f"run {run_id} is in {paths[owner[run_id]]} and {paths[i]}; reading it "
                     f"from {paths[owner[run_id]]}")  # fmt: skip
            else:
                owner[run_id] = i
    others = sorted(set(present) - set(PUBLIC_VIEWS))
    for name in (*PUBLIC_VIEWS, *others):
        parts = []
        for i, alias in enumerate(aliases):
            if alias not in present.get(name, ()):
                continue
            extra = f", {_text(paths[i])} AS db_path" if name == "runs" else ""
            where = ""
            if skip.get(i):
                where = f" WHERE run_id NOT IN ({', '.join(_text(r) for r in skip[i])})"
            parts.append(f"SELECT *{extra} FROM {alias}.main.{name}{where}")
        if parts:
            con.execute(f"CREATE OR REPLACE VIEW {name} AS {' UNION ALL BY NAME '.join(parts)}")
        elif name in PUBLIC_VIEWS:
            raise StoreError(f"{db_label(list(paths))}: no file has the {name} view")


def open_many(paths: Sequence[str], warn: Callable[[str], None] = _stderr) -> LocalReadConnection:
    """A read connection (:class:`agent.runs.LocalReadConnection`) over several databases."""
    from agent.runs import LocalReadConnection

    con, attached = attach_read_only(paths, warn)
    try:
        union_views(con, attached, warn)
    except BaseException:
        con.close()
        raise
    return LocalReadConnection(con, paths=tuple(attached))
