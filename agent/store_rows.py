"""The columns one flush hands DuckDB: NumPy arrays read through its replacement scan.

Building them is plain array work the writer repeats every flush; kept apart from the writer's
thread, retry and heartbeat logic so each stays readable.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np

from agent.model import Batch, Event, RunInfo
from agent.store import _us


def scan_columns(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    columns: dict[str, np.ndarray],
    params: list[Any] | None = None,
) -> None:
    """Run ``sql``, which reads the NumPy ``columns`` as the table ``columns`` (DuckDB's
    replacement scan finds the local of that name in this frame)."""
    con.execute(sql, params)


def sample_columns(
    ids: np.ndarray,
    orders: Sequence[Any],
    samples: Sequence[Batch],
    sizes: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """``series_id, ts, value`` of a tick's batches (``sizes``: their lengths, when the caller
    has them), each batch's values in its stored order."""
    return {
        "series_id": ids,
        "ts": np.repeat(
            np.array([_us(b.ts) for b in samples], dtype="datetime64[us]"),
            [len(b.values) for b in samples] if sizes is None else sizes,
        ),
        "value": np.concatenate(
            [np.asarray(b.values, dtype=np.float64)[o] for b, o in zip(samples, orders)]
        ),
    }


def entity_columns(attrs: Sequence[tuple[float, str, str, Any]]) -> dict[str, np.ndarray]:
    """``ts, source, entity, attrs`` (JSON) of the entities whose attributes changed."""
    return {
        "ts": np.array([_us(ts) for ts, *_ in attrs], dtype="datetime64[us]"),
        "source": np.array([s for _, s, _, _ in attrs], dtype=object),
        "entity": np.array([e for _, _, e, _ in attrs], dtype=object),
        "attrs": np.array([json.dumps(dict(a), default=str) for *_, a in attrs], dtype=object),
    }


def insert_events(con: duckdb.DuckDBPyConnection, run_id: str, events: Sequence[Event]) -> None:
    columns = {
        "ts": np.array([_us(e.ts) for e in events], dtype="datetime64[us]"),
        "kind": np.array([e.kind for e in events], dtype=object),
        "entity": np.array([e.entity for e in events], dtype=object),
        "detail": np.array([e.detail_json() for e in events], dtype=object),
    }
    scan_columns(
        con, "INSERT INTO event_log SELECT ?, ts, kind, entity, detail FROM columns", columns,
        [run_id],
    )  # fmt: skip


def insert_run(
    con: duckdb.DuckDBPyConnection, run: RunInfo, agent_host: str, agent_pid: int, lost: int
) -> None:
    """Append the run's current state (the ``runs`` view shows the latest per run) and its
    heartbeat row, once."""
    con.execute(
        "INSERT INTO run_log (run_id, name, mode, pid, cmdline, cwd, host, started, "
        "ended, exit_code, status, interval_s, tags, env, simulated, scenario, logged, "
        "agent_host, agent_pid, lost_ticks) VALUES (?, ?, ?, ?, ?, ?, ?, "
        "make_timestamp(?), make_timestamp(?), ?, ?, ?, ?, ?, ?, ?, make_timestamp(?), "
        "?, ?, ?)",
        [
            run.run_id, run.name, run.mode, run.pid, run.cmdline, run.cwd, run.host,
            _us(run.started), None if run.ended is None else _us(run.ended), run.exit_code,
            run.status, run.interval, json.dumps(run.tags), json.dumps(run.env), run.simulated,
            run.scenario, _us(time.time()), agent_host, agent_pid, lost,
        ],
    )  # fmt: skip
    con.execute(
        "INSERT INTO run_heartbeat SELECT ?, make_timestamp(?), NULL WHERE NOT EXISTS "
        "(SELECT 1 FROM run_heartbeat WHERE run_id = ?)",
        [run.run_id, _us(time.time()), run.run_id],
    )


# -- the writer's messages


def _stderr_line(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"accelwatch: {message}", file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "no space left" in text or "disk full" in text:
        return "disk full"
    if isinstance(exc, duckdb.OutOfMemoryException) or "out of memory" in text:
        return "out of memory"
    return "store error"
