"""Per-bucket runtime latencies by role, for the rules that read a runtime's distributions.

A TPU runtime reports host <-> device transfer, collective and cross-slice (DCN) latencies per
host, on its runtime entity rather than on a chip, so they are not columns of ``aw_accel``. This
reads them straight from ``samples`` for the analysed window: every metric of any source that
plays a latency role (``agent/catalog/roles.py`` LATENCIES), the worst entity per bucket, and
the operations per second from the distributions' counts. Only a few metrics are selected, so
the scan is one filtered pass over them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.analysis.engine import Context
from agent.analysis.frame_sql import in_list, time_bounds
from agent.catalog import CATALOG
from agent.catalog.roles import LATENCIES, latency_role

#: The frame's table name (a temp table on the rule's connection, rebuilt per analysis).
TABLE = "aw_latency"


def role_names(role: str) -> list[str]:
    """The metrics of every source that play ``role``."""
    return [m.name for m in CATALOG.by_role(role)]


def columns(stems: Iterable[str] = LATENCIES) -> dict[str, tuple[str, list[str]]]:
    """``<stem>_<q>`` column → (role, metric names); ``<stem>_rate`` from the counts."""
    out: dict[str, tuple[str, list[str]]] = {}
    for stem in stems:
        for quantile in ("p50", "p99"):
            role = latency_role(stem, quantile)
            out[f"{stem}_{quantile}"] = (role, role_names(role))
        role = latency_role(stem, "count")
        out[f"{stem}_rate"] = (role, role_names(role))
    return out


def build(ctx: Context) -> bool:
    """Create ``aw_latency(t, <stem>_p50, <stem>_p99, <stem>_rate ...)`` for the window;
    False (and no table) when no accelerator's source declares a latency role or none was
    recorded in the window."""
    if not recorded_by(ctx):
        return False
    cols = columns()
    names = sorted({n for _, ns in cols.values() for n in ns})
    window = ctx.info.window
    where = ["run_id = $run", f"metric IN ({in_list(names)})"]
    params: dict[str, Any] = {"run": window.run_id, "bucket_us": int(round(window.bucket_s * 1e6))}
    where += time_bounds(window.start, window.end, params)
    bucket = f"{float(window.bucket_s)}::DOUBLE"
    picks = []
    for alias, (_role, metrics) in cols.items():
        if alias.endswith("_rate"):
            picks.append(f"sum(rate) FILTER (WHERE metric IN ({in_list(metrics)})) AS {alias}")
        else:
            picks.append(f"max(v) FILTER (WHERE metric IN ({in_list(metrics)})) AS {alias}")
    # Counts are cumulative: a bucket's rate is its last count minus the previous bucket's
    # (a runtime restart makes it negative: no rate for that bucket).
    ctx.con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {TABLE} AS
        WITH a AS (SELECT entity, metric, epoch_us(ts) // $bucket_us AS k, avg(value) AS v,
                          max(value) AS mx
                   FROM samples WHERE {" AND ".join(where)} GROUP BY entity, metric, k),
        r AS (SELECT *, (mx - lag(mx) OVER w) / ({bucket} * (k - lag(k) OVER w)) AS raw_rate
              FROM a WINDOW w AS (PARTITION BY entity, metric ORDER BY k)),
        c AS (SELECT *, CASE WHEN raw_rate >= 0 THEN raw_rate END AS rate FROM r)
        SELECT k * {bucket} AS t, {", ".join(picks)} FROM c GROUP BY k""",
        params,
    )
    row = ctx.con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    return bool(row and row[0])


def recorded_by(ctx: Context) -> bool:
    """Whether any analysed accelerator's source declares a latency role (cheap: declarations)."""
    sources = set(ctx.info.sources.values())
    return any(
        m.source in sources
        for stem in LATENCIES
        for q in ("p50", "p99")
        for m in CATALOG.by_role(latency_role(stem, q))
    )


def evidence_metrics(aliases: Iterable[str]) -> list[str]:
    """The metric names behind ``aliases`` (a finding's evidence names what was measured)."""
    cols = columns()
    return sorted({n for a in aliases if a in cols for n in cols[a][1]})
