"""The columns one flush hands DuckDB: NumPy arrays read through its replacement scan.

Building them is plain array work the writer repeats every flush; kept apart from the writer's
thread, retry and heartbeat logic so each stays readable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np

from agent.model import Batch, Event
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
    ids: np.ndarray, orders: Sequence[Any], samples: Sequence[Batch]
) -> dict[str, np.ndarray]:
    """``series_id, ts, value`` of a tick's batches, each batch's values in its stored order."""
    return {
        "series_id": ids,
        "ts": np.repeat(
            np.array([_us(b.ts) for b in samples], dtype="datetime64[us]"),
            [len(b) for b in samples],
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
