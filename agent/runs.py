"""The one read side of a database: open it for reading, find and list runs, load findings.

Every reader (``runs``, ``report``, ``view``, ``sql``) goes through :func:`open_read`, which
returns a *read connection*: ``execute(sql, params)`` giving a small materialised result
(``fetchall``/``fetchone``/``fetchnumpy``/``description``). It is either a local read-only
DuckDB connection or, when a recording agent holds the file's lock, the agent's read socket
(:mod:`agent.readclient`). Nothing here ever writes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from agent.errors import StoreError, StoreInUseError, UsageError
from agent.model import RunInfo

if TYPE_CHECKING:
    import duckdb

    from agent.analysis.finding import Finding


class RunNotFoundError(UsageError):
    """The database holds no run with that id or name."""


@dataclass(frozen=True)
class ReadResult:
    """A query's rows, materialised: safe to keep after the cursor (or socket reply) is gone."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    @property
    def description(self) -> list[tuple[str]]:
        return [(c,) for c in self.columns]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        """The first value of the first row: what an aggregate query (which always returns
        exactly one row) computed."""
        return self.rows[0][0]

    def fetchnumpy(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, name in enumerate(self.columns):
            values = [r[i] for r in self.rows]
            try:
                out[name] = np.asarray(values) if values else np.asarray([], dtype=np.float64)
            except ValueError:
                out[name] = np.asarray(values, dtype=object)
            if out[name].dtype.kind == "U":
                out[name] = out[name].astype(object)
        return out

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


class ReadConnection(Protocol):
    """What readers query through: local read-only DuckDB or the recording agent's socket."""

    # Read-only properties, so a class attribute, an instance attribute or a property all fit.
    @property
    def via(self) -> str:
        """``"file"`` (read-only DuckDB) or ``"agent"`` (the recording agent serves the queries)."""
        ...

    @property
    def duckdb(self) -> duckdb.DuckDBPyConnection | None:
        """The raw DuckDB connection for in-memory analysis (temp frames); None over the socket."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> ReadResult: ...

    def close(self) -> None: ...


class LocalReadConnection:
    """A read-only DuckDB connection; each query gets its own cursor, so threads may share it.

    ``paths``: the database files it reads (several when it is the union of many files, see
    :mod:`agent.experiments.multidb`)."""

    via = "file"

    def __init__(self, con: duckdb.DuckDBPyConnection, paths: tuple[str, ...] = ()) -> None:
        self.duckdb = con
        self.paths = paths

    def execute(self, sql: str, params: Sequence[Any] = ()) -> ReadResult:
        cur = self.duckdb.cursor()
        try:
            cur.execute(sql, list(params))
            columns = tuple(d[0] for d in cur.description or ())
            return ReadResult(columns, cur.fetchall())
        finally:
            cur.close()

    def close(self) -> None:
        self.duckdb.close()


#: How long a reader waits for a finishing agent to hand the file over.
HANDOVER_S = 3.0


def socket_path(db_path: str | os.PathLike[str]) -> str:
    """Where the recording agent of ``db_path`` serves read-only queries."""
    return f"{os.fspath(db_path)}.sock"


DbSpec = str | os.PathLike[str] | Sequence[str]


def open_read(db_spec: DbSpec) -> ReadConnection:
    """Open a database for reading: the file read-only, or the recording agent's socket when
    an agent holds the file (DuckDB allows one writing process per file, and no reader beside
    it). Never creates or modifies anything.

    ``db_spec`` may also be several paths or globs (``--db 'nodes/*.duckdb'``): when they name
    more than one file, the result reads the union of their public views (runs found in any)."""
    from agent.experiments.multidb import expand_db_specs, open_many

    paths = expand_db_specs(db_spec)
    if len(paths) > 1:
        return open_many(paths)
    return _open_one(paths[0])


def expand_db_specs(db_spec: DbSpec) -> list[str]:
    """The files ``--db`` names (paths and quoted globs expanded, in order, each once)."""
    from agent.experiments.multidb import expand_db_specs as expand

    return expand(db_spec)


def db_label(db_spec: DbSpec) -> str:
    """How messages name what ``--db`` gave: a path, or the first path and how many more."""
    if isinstance(db_spec, str | os.PathLike):
        return os.fspath(db_spec)
    from agent.experiments.multidb import db_label as label

    return label([os.fspath(p) for p in db_spec]) if db_spec else ""


def _open_one(db_path: str) -> ReadConnection:
    from agent.readclient import connect_agent
    from agent.store import connect

    if not os.path.exists(db_path):
        raise StoreError(f"no database at {db_path}")
    deadline = time.monotonic() + HANDOVER_S
    while True:
        try:
            return LocalReadConnection(connect(db_path, read_only=True), (db_path,))
        except StoreInUseError:
            try:
                return connect_agent(db_path)
            except StoreInUseError:
                # An agent finalizing its run has closed its socket but not yet the file.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)


# -- runs
RUN_COLUMNS = (
    "run_id, name, pid, cmdline, cwd, host, epoch_us(started) AS started, interval_s, tags, env, "
    "mode, simulated, scenario, epoch_us(ended) AS ended, exit_code, status"
)


def _run_info(row: Sequence[Any], db_path: str) -> RunInfo:
    (
        run_id,
        name,
        pid,
        cmdline,
        cwd,
        host,
        started,
        interval,
        tags,
        env,
        mode,
        simulated,
        scenario,
        ended,
        exit_code,
        status,
    ) = row
    return RunInfo(
        run_id=run_id,
        name=name,
        pid=pid,
        cmdline=list(cmdline or []),
        cwd=cwd or "",
        host=host or "",
        started=started / 1e6 if started is not None else time.time(),
        interval=interval or 1.0,
        db_path=str(db_path),
        tags=json_object(tags),
        env=json_object(env),
        mode=mode or "attach",
        simulated=bool(simulated),
        scenario=scenario,
        ended=None if ended is None else ended / 1e6,
        exit_code=exit_code,
        status=status or "unknown",
    )


def json_object(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def find_run(db: ReadConnection | Any, run: str | None, db_path: DbSpec) -> RunInfo:
    """The run with this id or name (the latest of that name), or the latest run.

    ``db`` is anything with ``execute(sql, params)`` (a read connection, or a DuckDB one)."""
    db_path = db_label(db_path)
    where, params = ("", []) if run is None else ("WHERE run_id = ? OR name = ?", [run, run])
    row = db.execute(
        f"SELECT {RUN_COLUMNS} FROM runs {where} "
        "ORDER BY (run_id = ?) DESC, runs.started DESC LIMIT 1",
        [*params, run or ""],
    ).fetchone()
    if row is None:
        if run is None:
            raise RunNotFoundError(f"no runs recorded in {db_path}")
        raise RunNotFoundError(
            f"no run {run!r} in {db_path} (see `accelwatch runs --db {db_path}`)"
        )
    return _run_info(row, db_path)


def list_runs(
    db: ReadConnection,
    *,
    name: str | None = None,
    tags: Sequence[tuple[str, str]] = (),
    stats: bool = False,
) -> list[dict[str, Any]]:
    """Every run, oldest first, as a reader should show it: typed ``tags`` and ``env``
    (objects, not JSON text) and the effective status (``lost`` when the recording agent is
    gone, with ``last_sample``; ``recorded_status`` keeps the stored one) and ``db_path``,
    the file the run is in.

    ``tags`` are the run's (``--tag``) over those its training script set (``run_tags``).
    ``name``: a shell pattern (``bert-*``; without wildcards, a part of the name) the run's
    name must match; ``tags``: (key, value) pairs the run must all carry. ``stats`` adds each
    run's ``duration_s`` and experiment numbers (:mod:`agent.experiments.stats`: steps, step
    time, throughput, accelerator activity, energy) and its ``top_finding``, computed for all
    listed runs in two statements (five in all, whatever the number of runs)."""
    from agent.store import RUNS_V2_COLUMNS, effective_status

    rows = db.execute("SELECT * FROM runs ORDER BY started").records()
    from_script = script_tags(db)
    locked = db.via == "agent"  # an agent holds the file: it is the one answering
    paths = getattr(db, "paths", ()) or (getattr(db, "db_path", None),)
    out = []
    for r in rows:
        for column in RUNS_V2_COLUMNS:
            r.setdefault(column, None)
        r.setdefault("db_path", None if paths[0] is None else os.fspath(paths[0]))
        r["tags"] = {**from_script.get(r["run_id"], {}), **json_object(r.get("tags"))}
        r["env"] = json_object(r.get("env"))
        if not _matches(r, name, tags):
            continue
        r["recorded_status"] = r["status"]
        r["status"] = effective_status(r, locked=locked)
        if r["status"] == "lost":  # the heartbeat's last_sample trails by up to a beat
            last = last_sample_time(db, r["run_id"])
            if last is not None:
                r["last_sample"] = _naive_utc(last)
        out.append(r)
    if stats:
        _add_stats(db, out)
    return out


def has_relation(db: ReadConnection | Any, name: str) -> bool:
    """Whether the database read has a table or view ``name`` (a file may predate it)."""
    return bool(
        db.execute(
            "SELECT count(*) FROM (SELECT table_name AS n, database_name AS d FROM duckdb_tables() "
            "UNION ALL SELECT view_name, database_name FROM duckdb_views() WHERE NOT internal) "
            "WHERE n = ? AND d = current_database()",
            [name],
        ).scalar()
    )


def script_tags(db: ReadConnection | Any) -> dict[str, dict[str, Any]]:
    """Per run, the tags the training script set (``accelwatch.tag()``, view ``run_tags``)."""
    if not has_relation(db, "run_tags"):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for run_id, key, raw in db.execute(
        "SELECT run_id, key, CAST(value AS VARCHAR) FROM run_tags"
    ).fetchall():
        try:
            value = json.loads(raw) if raw is not None else None
        except ValueError:
            value = raw
        out.setdefault(run_id, {})[str(key)] = value
    return out


def _matches(run: dict[str, Any], name: str | None, tags: Sequence[tuple[str, str]]) -> bool:
    from fnmatch import fnmatchcase

    if name is not None:
        have = str(run.get("name") or "")
        wild = any(c in name for c in "*?[")
        if not (fnmatchcase(have, name) if wild else name in have):
            return False
    have_tags = run["tags"]
    return all(k in have_tags and _tag_text(have_tags[k]) == v for k, v in tags)


def _tag_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_duration_s(run: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds from start to end (or to the last sample of a run that has not ended)."""
    started = _epoch_s(run.get("started"))
    end = _epoch_s(run.get("ended")) or _epoch_s(run.get("last_sample"))
    if end is None and run.get("status") == "running":
        end = time.time() if now is None else now
    if started is None or end is None:
        return None
    return max(0.0, end - started)


def _epoch_s(value: Any) -> float | None:
    value = as_datetime(value)
    return None if value is None else value.replace(tzinfo=timezone.utc).timestamp()


def _add_stats(db: ReadConnection, rows: list[dict[str, Any]]) -> None:
    from agent.experiments.stats import run_stats, top_findings

    for r in rows:
        r["duration_s"] = run_duration_s(r)
    ids = [r["run_id"] for r in rows]
    numbers = run_stats(db, [(r["run_id"], r["duration_s"]) for r in rows])
    top = top_findings(db, ids)
    for r in rows:
        r.update(numbers.get(r["run_id"], {}))
        r["top_finding"] = top.get(r["run_id"])


def typed(value: Any) -> Any:
    """``value`` as JSON should carry it: timestamps (naive = UTC) as ISO 8601 with their
    offset, containers recursively, numbers and text as they are."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [typed(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _naive_utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, timezone.utc).replace(tzinfo=None)


def last_sample_time(db: ReadConnection, run_id: str) -> float | None:
    """Epoch seconds of the run's newest sample (what a live run holds up to its last flush)."""
    value = db.execute(
        "SELECT epoch_us(max(ts)) FROM samples WHERE run_id = ?", [run_id]
    ).fetchone()
    return None if value is None or value[0] is None else value[0] / 1e6


# -- findings
FINDING_COLUMNS = (
    "rule, severity, entity, start_ts, end_ts, summary, next_step, evidence, live, detected"
)


def stored_findings(db: ReadConnection | Any, run_id: str) -> tuple[list[Finding], bool]:
    """The run's stored findings and whether they are live ones: the post-run analysis
    supersedes what was found live, so live findings are returned only when there is none."""
    from agent.analysis.finding import finding_from_row, sort_findings

    rows = db.execute(
        f"SELECT {FINDING_COLUMNS} FROM findings WHERE run_id = ?", [run_id]
    ).fetchall()
    final = [r for r in rows if not r[8]]
    chosen = final or rows
    return sort_findings(finding_from_row(r) for r in chosen), not final and bool(rows)


def as_datetime(value: Any) -> datetime | None:
    """A naive-UTC datetime from what a read connection returns for a TIMESTAMP."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
