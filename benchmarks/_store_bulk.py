"""The bulk side of ``bench_recording``'s ingest: the same samples loaded from Arrow in one go
into the same physical result the agent's writer leaves at close, and the check that it does.

The ingest target (agent flush >= 0.5x bulk) means something only if the bulk side does the
same work: a fresh file with the agent's tables, the spans sorted by series as the close sorts
them, the same ticks and buckets. :func:`layout_digest` of both files must be equal.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from agent.model import RunInfo
from agent.store import Store

#: The physical tables the agent's close leaves with the samples in them: the bulk side fills
#: the same, and round 0 checks they hold the same rows (spans and ticks in the same order).
LAYOUT_TABLES = ("series", "sample_recent", "sample_moving", "sample_ticks", "sample_span_rows",
                 "sample_buckets", "sample_buckets_flat", "bucket_series")  # fmt: skip


def bulk_template(tmp: Path) -> Path:
    """An agent file with the bench run's row and no samples: the schema (tables, views,
    meta rows) both sides start from. The writer's side creates it in ``Store(...)``, the bulk
    side copies it; both outside the timers."""
    path = tmp / "template.duckdb"
    store = Store(path)
    store.write_run(bench_run(store))
    store.close()
    return path


def bulk_same_layout(path: Path, template: Path, values: object, series: object) -> float:
    """The bulk side of ingest: the same rows, from Arrow, in one transaction, into the same
    physical result the agent's ``close()`` leaves (``agent/store_rewrite.py``): a fresh file
    of 32 KiB blocks with the template's schema and run, the series dictionary, the ticks
    numbered in time order, the spans sorted by series (metric, entity, source) with every
    other series' ticks descending, each series' values divided by its power of two (schema
    6), which series are bucketed, and their 30 s buckets (flat ones apart), then
    checkpointed. DuckDB's own sort and aggregation, all its threads.
    Returns the wall seconds from after the schema copy to the closed file."""
    from agent.analysed import analysed_series_where
    from agent.store_buckets import BUCKET_BASE_US, idle_threshold
    from agent.store_rewrite import BUCKETS_FROM_S, DENSE_TICK_S
    from agent.store_span_rows import WHOLE_SHARE

    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{template}' AS t (READ_ONLY)")
        con.execute(f"ATTACH '{path}' AS b (BLOCK_SIZE 32768)")
        con.execute("COPY FROM DATABASE t TO b")
        con.execute("DETACH t")
        con.execute("SET preserve_insertion_order = true")
        arrow_values, arrow_series = values, series  # noqa: F841 - DuckDB's replacement scan
        wall = time.perf_counter()
        con.execute("BEGIN")
        con.execute("INSERT INTO b.series SELECT series_id, 'bench', source, entity, metric "
                    "FROM arrow_series ORDER BY series_id")  # fmt: skip
        con.execute(
            "CREATE TEMP TABLE ranks AS SELECT series_id, (row_number() OVER (ORDER BY metric, "
            "entity, source, series_id) - 1)::INTEGER AS rank FROM b.series"
        )
        con.execute(
            "CREATE TEMP TABLE ticks AS SELECT row_number() OVER (ORDER BY ts)::INTEGER AS tick,"
            " ts FROM (SELECT DISTINCT ts FROM arrow_values)"
        )
        con.execute("INSERT INTO b.sample_ticks SELECT tick, ts FROM ticks ORDER BY tick")
        # schema 6's rows (agent.store_span_rows): each series divided by the largest power of two that leaves 90 % of it whole
        # (zeros count as any), capped by its nonzero values' own, unless that loses a value
        whole = "(isfinite(value) AND abs(value) < 2.0 ^ 53 AND value = trunc(value))"
        lowest = "(abs(value)::BIGINT & -(abs(value)::BIGINT))"
        con.execute(
            f"CREATE TEMP TABLE hist AS SELECT series_id, b, count(*) AS c FROM (SELECT "
            f"series_id, CASE WHEN NOT {whole} THEN 0 WHEN value = 0 THEN 53 "
            f"ELSE round(log2({lowest}))::INTEGER END AS b FROM arrow_values) GROUP BY ALL"
        )
        con.execute(
            "CREATE TEMP TABLE scales AS SELECT series_id, pow(2.0, greatest(0, least("
            "coalesce(max(least(b, 52)) FILTER (WHERE at_least >= ceil(? * n)), 0), "
            "coalesce(max(b) FILTER (WHERE b <= 52), -1)))) AS scale FROM (SELECT *, "
            "sum(c) OVER (PARTITION BY series_id ORDER BY b DESC) AS at_least, "
            "sum(c) OVER (PARTITION BY series_id) AS n FROM hist) GROUP BY 1",
            [WHOLE_SHARE],
        )
        con.execute(
            "UPDATE scales SET scale = 1.0 WHERE series_id IN (SELECT v.series_id FROM "
            "arrow_values v JOIN scales s USING (series_id) WHERE (v.value / s.scale) * s.scale "
            "IS DISTINCT FROM v.value)"
        )
        con.execute(
            "INSERT INTO b.sample_span_rows SELECT v.series_id, k.tick, v.value / s.scale, "
            "s.scale FROM arrow_values v JOIN ticks k USING (ts) JOIN ranks r USING (series_id) "
            "JOIN scales s USING (series_id) "
            "ORDER BY r.rank, CASE WHEN r.rank % 2 = 1 THEN -k.tick ELSE k.tick END"
        )
        # buckets only where a post-run frame could read them, as the close decides
        span_s, gaps = con.execute(
            "SELECT (epoch_us(max(ts)) - epoch_us(min(ts))) / 1e6, count(*) - 1 FROM ticks"
        ).fetchone()
        serve = span_s >= BUCKETS_FROM_S or span_s > DENSE_TICK_S * max(gaps, 1)
        test = f"series_id IN (SELECT series_id FROM b.series WHERE {analysed_series_where()})"
        con.execute(
            f"INSERT INTO b.bucket_series SELECT series_id, {test if serve else 'false'} "
            "FROM b.series ORDER BY series_id"
        )
        if serve:
            con.execute(
                f"CREATE TEMP TABLE agg AS SELECT v.series_id, (epoch_us(v.ts) // {BUCKET_BASE_US})"
                "::INTEGER AS bucket, count(*)::INTEGER AS n, sum(v.value) AS total, "
                f"count_if(v.value < {idle_threshold()!r})::INTEGER AS low, min(v.value) AS min, "
                "max(v.value) AS max, count_if(v.value IS NULL)::INTEGER AS nulls, "
                "any_value(r.rank) AS rank FROM arrow_values v "
                "JOIN ranks r USING (series_id) WHERE v.series_id IN "
                "(SELECT series_id FROM b.bucket_series WHERE bucketed) GROUP BY ALL"
            )
            order = "ORDER BY rank, CASE WHEN rank % 2 = 1 THEN -bucket ELSE bucket END"
            flat = "min = max AND NOT isnan(max) AND nulls = 0"
            con.execute(
                "INSERT INTO b.sample_buckets SELECT series_id, bucket, n, total, low, min, max, "
                f"nulls FROM agg WHERE NOT ({flat}) {order}"
            )
            con.execute(
                "INSERT INTO b.sample_buckets_flat SELECT series_id, bucket, n, min FROM agg "
                f"WHERE {flat} {order}"
            )
        con.execute("COMMIT")
        con.execute("DETACH b")  # checkpoints
    finally:
        con.close()
    return time.perf_counter() - wall


def layout_digest(path: Path) -> dict[str, object]:
    """Per physical table its rows, and for the spans and ticks a digest of their rows in
    storage order: two files with the same digest hold the same samples in the same order."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        got: dict[str, object] = {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in LAYOUT_TABLES
        }
        got["sample_span_rows order"] = con.execute(
            "SELECT sum(hash(rowid, series_id, tick, value, scale)::HUGEINT) FROM sample_span_rows"
        ).fetchone()[0]
        got["bucket_series bucketed"] = con.execute(
            "SELECT count_if(bucketed) FROM bucket_series"
        ).fetchone()[0]
        got["sample_ticks order"] = con.execute(
            "SELECT sum(hash(rowid, tick, ts)::HUGEINT) FROM sample_ticks"
        ).fetchone()[0]
        got["block_size"] = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[
            0
        ]
    finally:
        con.close()
    return got


def bench_run(store: Store) -> RunInfo:
    return RunInfo("bench", "bench", 1, ["train.py"], "/", "bench", time.time(), 1.0,
                   str(store.path))  # fmt: skip
