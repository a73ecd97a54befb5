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
    """A read-only DuckDB connection; each query gets its own cursor, so threads may share it."""

    via = "file"

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.duckdb = con

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


def open_read(db_path: str | os.PathLike[str]) -> ReadConnection:
    """Open ``db_path`` for reading: the file read-only, or the recording agent's socket when
    an agent holds the file (DuckDB allows one writing process per file, and no reader beside
    it). Never creates or modifies anything."""
    from agent.readclient import connect_agent
    from agent.store import connect

    if not os.path.exists(db_path):
        raise StoreError(f"no database at {db_path}")
    deadline = time.monotonic() + HANDOVER_S
    while True:
        try:
            return LocalReadConnection(connect(db_path, read_only=True))
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


def find_run(db: ReadConnection | Any, run: str | None, db_path: str) -> RunInfo:
    """The run with this id or name (the latest of that name), or the latest run.

    ``db`` is anything with ``execute(sql, params)`` (a read connection, or a DuckDB one)."""
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


def list_runs(db: ReadConnection) -> list[dict[str, Any]]:
    """Every run, oldest first, as a reader should show it: typed ``tags`` and ``env``
    (objects, not JSON text) and the effective status (``lost`` when the recording agent is
    gone, with ``last_sample``; ``recorded_status`` keeps the stored one)."""
    from agent.store import RUNS_V2_COLUMNS, effective_status

    rows = db.execute("SELECT * FROM runs ORDER BY started").records()
    locked = db.via == "agent"  # an agent holds the file: it is the one answering
    for r in rows:
        for column in RUNS_V2_COLUMNS:
            r.setdefault(column, None)
        r["tags"] = json_object(r.get("tags"))
        r["env"] = json_object(r.get("env"))
        r["recorded_status"] = r["status"]
        r["status"] = effective_status(r, locked=locked)
        if r["status"] == "lost" and r["last_sample"] is None:
            last = last_sample_time(db, r["run_id"])
            r["last_sample"] = None if last is None else _naive_utc(last)
    return rows


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
