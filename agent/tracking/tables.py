"""The tracking tables: written with each tick (through the store's writer), read by anyone.

Physical tables are append-only; the public views are ``train_metrics(run_id, ts, rank, step,
name, value)``, ``run_config(run_id, key, value)`` and ``run_tags(run_id, key, value)`` (latest
value per key, JSON text). A file written before schema 3 has none of them: the readers here
return nothing for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import duckdb
import numpy as np

#: Record kinds a batch may carry (``Batch.records``) → the physical table they go to.
METRICS_RECORD = "train_metrics"
SETTINGS_RECORD = "run_config"


def metric_columns(rows: Sequence[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """``(ts, rank, step, name, value)`` rows as the columns a batch carries (~36 B a row)."""
    ts, rank, step, name, value = zip(*rows) if rows else ((),) * 5
    return {
        "ts": (np.array(ts, dtype=np.float64) * 1e6).astype("datetime64[us]"),
        "rank": np.array(rank, dtype=np.int32),
        "step": np.array([-1 if s is None else s for s in step], dtype=np.int64),
        "name": np.array(name, dtype=object),
        "value": np.array(value, dtype=np.float64),
    }


def setting_columns(rows: Sequence[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """``(ts, kind, rank, key, json value)`` rows as columns."""
    ts, kind, rank, key, value = zip(*rows) if rows else ((),) * 5
    return {
        "ts": (np.array(ts, dtype=np.float64) * 1e6).astype("datetime64[us]"),
        "kind": np.array(kind, dtype=object),
        "rank": np.array(rank, dtype=np.int32),
        "key": np.array(key, dtype=object),
        "value": np.array(value, dtype=object),
    }


def _joined(parts: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def insert_records(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    records: Iterable[Mapping[str, Mapping[str, np.ndarray]]],
) -> int:
    """Insert the batches' tracking records (inside the writer's transaction); rows written."""
    metrics = [r[METRICS_RECORD] for r in records if METRICS_RECORD in r]
    settings = [r[SETTINGS_RECORD] for r in records if SETTINGS_RECORD in r]
    n = 0
    if metrics:
        tick_metrics = _joined(metrics)
        con.execute(
            "INSERT INTO train_metric_values SELECT ?, ts, rank, nullif(step, -1), name, value "
            "FROM tick_metrics",
            [run_id],
        )
        n += len(tick_metrics["value"])
    if settings:
        tick_settings = _joined(settings)
        con.execute(
            "INSERT INTO run_setting_log SELECT ?, ts, kind, rank, key, value FROM tick_settings",
            [run_id],
        )
        n += len(tick_settings["value"])
    return n


def _has(con: duckdb.DuckDBPyConnection, view: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND NOT internal", [view]
    ).fetchone()
    return bool(row and row[0])


def run_settings(con: duckdb.DuckDBPyConnection, run_id: str, view: str) -> dict[str, Any]:
    """``run_config`` or ``run_tags`` of a run as a dict of decoded values ({} on older files)."""
    if view not in ("run_config", "run_tags") or not _has(con, view):
        return {}
    rows = con.execute(f"SELECT key, value FROM {view} WHERE run_id = ? ORDER BY key", [run_id])
    return {key: json.loads(value) for key, value in rows.fetchall()}


def metric_series(
    con: duckdb.DuckDBPyConnection, run_id: str
) -> dict[tuple[int, str], list[tuple[int | None, float]]]:
    """(rank, name) → [(step, value)] in time order ({} on files without the table)."""
    if not _has(con, "train_metrics"):
        return {}
    out: dict[tuple[int, str], list[tuple[int | None, float]]] = {}
    rows = con.execute(
        "SELECT rank, name, step, value FROM train_metrics WHERE run_id = ? ORDER BY ts, step",
        [run_id],
    ).fetchall()
    for rank, name, step, value in rows:
        out.setdefault((rank, name), []).append((step, value))
    return out
