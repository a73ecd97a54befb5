"""``accelwatch export RUN... --format parquet|csv --out DIR``: runs as files any engine reads.

One directory per table, hive-partitioned by run::

    DIR/runs/run_id=<id>/data_0.parquet       the run's row of ``runs`` (tags, env as JSON)
    DIR/samples/run_id=<id>/...               every sample (ts, source, entity, metric, value)
    DIR/steps/run_id=<id>/...                 per rank and time: step count and step time
    DIR/metrics/run_id=<id>/...               the training client's logged metrics, if any
    DIR/config/run_id=<id>/...                the run's configuration (key, JSON value), if any
    DIR/tags/run_id=<id>/...                  tags the training script set (key, JSON value)
    DIR/events/, DIR/entities/, DIR/findings/

so ``read_parquet('DIR/samples/**/*.parquet', hive_partitioning=true)`` reads every exported
run at once, ``run_id`` coming back from the directory names. Files are written by DuckDB's
own ``COPY ... (PARTITION_BY (run_id))`` (no pyarrow), under a private umask: files 0600,
directories 0700 from their first byte. A run already exported to DIR is refused unless
``--overwrite``, which replaces only that run's partitions.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.analysis.frame import STEP_COUNT, STEP_TIME
from agent.errors import AccelwatchError, StoreInUseError, UsageError
from agent.registry import default_registry
from agent.runs import DbSpec, ReadConnection, db_label, find_run, has_relation

FORMATS = ("parquet", "csv")


class ExportError(AccelwatchError):
    """The export directory cannot be written."""


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _tables(db: ReadConnection) -> dict[str, str]:
    """Table name in the export → the SELECT that fills it (``{runs}``: the run id list)."""
    rank = default_registry().kind_predicate("rank")
    out = {
        "runs": "SELECT * {exclude} FROM runs WHERE run_id IN ({runs})",
        "samples": "SELECT * FROM samples WHERE run_id IN ({runs})",
        "steps": (
            "SELECT run_id, ts, entity, "
            "TRY_CAST(regexp_extract(entity, '([0-9]+)$', 1) AS INTEGER) AS rank, "
            f"max(value) FILTER (WHERE metric = '{STEP_COUNT}') AS step, "
            f"max(value) FILTER (WHERE metric = '{STEP_TIME}') AS step_time "
            f"FROM samples WHERE run_id IN ({{runs}}) AND metric IN ('{STEP_TIME}', "
            f"'{STEP_COUNT}') AND ({rank}) GROUP BY run_id, ts, entity"
        ),
        "events": "SELECT * FROM events WHERE run_id IN ({runs})",
        "entities": "SELECT * FROM entities WHERE run_id IN ({runs})",
        "findings": "SELECT * FROM findings WHERE run_id IN ({runs})",
    }
    if has_relation(db, "train_metrics"):
        out["metrics"] = "SELECT * FROM train_metrics WHERE run_id IN ({runs})"
    for view, table in (("run_config", "config"), ("run_tags", "tags")):
        if has_relation(db, view):
            out[table] = (
                f"SELECT run_id, key, CAST(value AS VARCHAR) AS value FROM {view} "
                "WHERE run_id IN ({runs})"
            )
    return out


def _prepare_out(out: Path, run_ids: Sequence[str], tables: Sequence[str], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a directory")
    if not out.parent.is_dir():
        raise ExportError(f"cannot create {out}: directory {out.parent} does not exist")
    try:
        out.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out}: {exc.strerror or exc}") from None
    for table in tables:
        for run_id in run_ids:
            part = out / table / f"run_id={run_id}"
            if not part.exists():
                continue
            if not overwrite:
                raise ExportError(
                    f"run {run_id} is already exported to {out} ({part}); use --overwrite "
                    "to replace it or export to another --out"
                )
            shutil.rmtree(part)


def export_runs(
    db: ReadConnection,
    runs: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    fmt: str = "parquet",
    overwrite: bool = False,
    db_spec: DbSpec = "",
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Write the runs' tables under ``out_dir``: the run ids exported and, per table, the
    rows and files written."""
    from agent.store import make_files_private

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    con = db.duckdb
    if con is None:
        raise StoreInUseError(
            f"{db_label(db_spec)} is being recorded; export its runs once the recording ends"
        )
    label = db_label(db_spec)
    run_ids = list(dict.fromkeys(find_run(db, r, label).run_id for r in runs))
    tables = _tables(db)
    out = Path(out_dir)
    make_files_private()  # files 0600, directories 0700, as DuckDB creates them
    _prepare_out(out, run_ids, list(tables), overwrite)
    listed = ", ".join(_text(r) for r in run_ids)
    # The union of several files adds ``db_path`` to runs: leave it out, so an export's
    # ``runs`` files have the same columns whichever way they were read.
    exclude = "EXCLUDE (db_path)" if len(getattr(db, "paths", ())) > 1 else ""
    options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER true"
    written: dict[str, dict[str, Any]] = {}
    for table, select in tables.items():
        target = out / table
        query = select.format(runs=listed, exclude=exclude)
        rows = con.execute(f"SELECT count(*) FROM ({query})").fetchone()
        n = int(rows[0]) if rows else 0
        if n:
            append = ", APPEND true" if target.exists() else ""
            try:
                con.execute(
                    f"COPY ({query}) TO {_text(str(target))} "
                    f"({options}, PARTITION_BY (run_id){append})"
                )
            except Exception as exc:
                if type(exc).__module__.split(".")[0] not in ("duckdb", "_duckdb"):
                    raise
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ExportError(f"cannot write {target}: {first}") from None
        files = sum(
            len(list((target / f"run_id={r}").glob(f"*.{fmt}")))
            for r in run_ids
            if (target / f"run_id={r}").is_dir()
        )
        written[table] = {"rows": n, "files": files}
    return run_ids, written
