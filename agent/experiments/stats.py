"""A run's numbers as an experiment: steps, step time, throughput, accelerator activity,
memory, energy. Computed for many runs at once in one SQL statement over the public views, so
``accelwatch runs`` stays fast on a file of hundreds of runs.

Everything is selected by entity kind and metric role, never by a source's name: steps are
``step.time``/``step.count`` samples of entities of kind ``rank``, activity is the
``accelerator.busy`` role over entities of kind ``accelerator``, memory
``accelerator.memory.used``/``.total``, energy the reset-safe increase of the cumulative
``accelerator.energy`` counter (as the report counts it: the counter's first value is what
the run used before its first sample, a drop is a reset).

Definitions (docs/readers.md): *steps* is the most steps any rank made (``step.count``'s last
value, else its number of ``step.time`` samples); *mean step time* averages every rank's step
times; *throughput* is steps per second of the run's duration; *energy per step* is the run's
accelerator energy divided by its steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.analysis.frame import STEP_COUNT, STEP_TIME
from agent.analysis.frame_accel import accelerator_plan
from agent.analysis.frame_sql import in_list
from agent.registry import default_registry

#: Step time and throughput percentiles that ``compare`` shows.
PERCENTILES = (0.5, 0.9, 0.99)


def _predicates() -> dict[str, str]:
    plan = accelerator_plan()
    return {
        "accel": plan.predicate,
        "rank": default_registry().kind_predicate("rank"),
        "busy": in_list(plan.role_metrics("busy")),
        "energy": in_list(plan.role_metrics("energy")),
        "mem_used": in_list(plan.role_metrics("mem_used")),
        "mem_total": in_list(plan.role_metrics("mem_total")),
    }


def _stats_sql(n_runs: int, *, percentiles: bool) -> str:
    """One statement: each series (run, source, entity, metric) of the wanted metrics is
    aggregated in one pass over the samples; which series are ranks or accelerators (a regular
    expression each) is decided on those few rows, never per sample. Percentiles, when asked,
    read the samples of the chosen series again."""
    p = _predicates()
    runs = ", ".join("(?)" for _ in range(n_runs))
    qs = "[" + ", ".join(str(x) for x in PERCENTILES) + "]"
    metrics = (
        f"'{STEP_TIME}', '{STEP_COUNT}', {p['busy']}, {p['energy']}, {p['mem_used']}, "
        f"{p['mem_total']}"
    )
    if percentiles:
        quantiles = f"""
quantiles AS (
    SELECT run_id,
           quantile_cont(value, {qs}) FILTER (WHERE metric = '{STEP_TIME}') AS step_q,
           quantile_cont(1.0 / value, {qs}) FILTER (WHERE metric = '{STEP_TIME}' AND value > 0)
               AS tput_q,
           quantile_cont(value, {qs}) FILTER (WHERE metric IN ({p["busy"]})) AS busy_q
    FROM samples JOIN (SELECT run_id, source, entity, metric FROM kinds
                       WHERE (is_rank AND metric = '{STEP_TIME}')
                          OR (is_accel AND metric IN ({p["busy"]}))) USING (run_id, source, entity, metric)
    GROUP BY run_id)"""
    else:
        quantiles = (
            "quantiles AS (SELECT run_id, NULL AS step_q, NULL AS tput_q, NULL AS busy_q "
            "FROM wanted)"
        )
    return f"""
WITH wanted(run_id) AS (VALUES {runs}),
series AS (
    SELECT run_id, source, entity, metric, count(value) AS n, sum(value) AS total,
           max(value) AS top
    FROM samples JOIN wanted USING (run_id) WHERE metric IN ({metrics}) GROUP BY ALL),
increases AS (  -- the energy counter's reset-safe increase, as the report counts it
    SELECT run_id, source, entity, metric, sum(CASE WHEN d >= 0 THEN d ELSE value END) AS inc
    FROM (SELECT run_id, source, entity, metric, value,
                 value - lag(value) OVER (PARTITION BY run_id, source, entity, metric
                                          ORDER BY ts) AS d
          FROM samples JOIN wanted USING (run_id) WHERE metric IN ({p["energy"]}))
    GROUP BY ALL),
kinds AS (
    SELECT s.*, i.inc, coalesce({p["rank"]}, FALSE) AS is_rank,
           coalesce({p["accel"]}, FALSE) AS is_accel
    FROM series s LEFT JOIN increases i USING (run_id, source, entity, metric)),
per_rank AS (
    SELECT run_id, entity, sum(n) FILTER (WHERE metric = '{STEP_TIME}') AS n_times,
           max(top) FILTER (WHERE metric = '{STEP_COUNT}') AS n_count
    FROM kinds WHERE is_rank AND metric IN ('{STEP_TIME}', '{STEP_COUNT}') GROUP BY ALL),
steps AS (
    SELECT run_id, max(coalesce(n_count, n_times)) AS steps, count(*) AS ranks
    FROM per_rank GROUP BY run_id),
totals AS (
    SELECT run_id,
           sum(total) FILTER (WHERE is_rank AND metric = '{STEP_TIME}')
             / sum(n) FILTER (WHERE is_rank AND metric = '{STEP_TIME}') AS step_time_mean,
           sum(total) FILTER (WHERE is_accel AND metric IN ({p["busy"]}))
             / sum(n) FILTER (WHERE is_accel AND metric IN ({p["busy"]})) AS busy_mean,
           count(DISTINCT entity) FILTER (WHERE is_accel AND metric IN ({p["busy"]}))
             AS accelerators,
           max(top) FILTER (WHERE is_accel AND metric IN ({p["mem_used"]})) AS mem_peak,
           sum(total) FILTER (WHERE is_accel AND metric IN ({p["mem_used"]}))
             / sum(n) FILTER (WHERE is_accel AND metric IN ({p["mem_used"]})) AS mem_mean,
           max(top) FILTER (WHERE is_accel AND metric IN ({p["mem_total"]})) AS mem_total,
           sum(inc) FILTER (WHERE is_accel AND metric IN ({p["energy"]})) AS energy_j
    FROM kinds GROUP BY run_id),
{quantiles}
SELECT w.run_id, steps.steps, steps.ranks, totals.step_time_mean, quantiles.step_q,
       quantiles.tput_q, totals.busy_mean, quantiles.busy_q, totals.accelerators,
       totals.mem_peak, totals.mem_mean, totals.mem_total, totals.energy_j
FROM wanted w LEFT JOIN steps USING (run_id) LEFT JOIN totals USING (run_id)
     LEFT JOIN quantiles USING (run_id)
"""


def _quantiles(prefix: str, values: Sequence[float] | None) -> dict[str, float | None]:
    values = values or [None] * len(PERCENTILES)  # type: ignore[list-item]
    return {f"{prefix}_p{round(q * 100)}": v for q, v in zip(PERCENTILES, values)}


def run_stats(
    db: Any, runs: Sequence[tuple[str, float | None]], *, percentiles: bool = False
) -> dict[str, dict[str, Any]]:
    """Per run id, its experiment numbers (None where nothing measured them).

    ``runs``: (run id, duration in seconds) pairs; ``db``: a read connection. One statement
    for all runs; ``percentiles`` adds step time, throughput and activity percentiles."""
    if not runs:
        return {}
    sql, params = _stats_sql(len(runs), percentiles=percentiles), [r for r, _ in runs]
    if db.duckdb is not None:  # a local read: DuckDB's defaults, as a post-run analysis gets
        from agent.analysis.engine import post_run_resources

        with post_run_resources(db.duckdb):
            rows = db.execute(sql, params)
    else:  # through the recording agent: its small budget, the job comes first
        rows = db.execute(sql, params)
    duration = dict(runs)
    out: dict[str, dict[str, Any]] = {}
    for r in rows.records():
        seconds = duration.get(r["run_id"])
        steps = None if r["steps"] is None else int(r["steps"])
        energy = None if r["energy_j"] is None else float(r["energy_j"])
        stats: dict[str, Any] = {
            "steps": steps,
            "ranks": r["ranks"],
            "step_time_mean_s": r["step_time_mean"],
            "throughput_steps_s": steps / seconds if steps and seconds else None,
            "accel_busy_mean": r["busy_mean"],
            "accelerators": r["accelerators"] or 0,
            "memory_peak_bytes": r["mem_peak"],
            "memory_mean_bytes": r["mem_mean"],
            "memory_total_bytes": r["mem_total"],
            "energy_j": energy,
            "energy_per_step_j": energy / steps if energy is not None and steps else None,
        }
        if percentiles:
            stats.update(_quantiles("step_time_s", r["step_q"]))
            stats.update(_quantiles("throughput_steps_s", r["tput_q"]))
            stats.update(_quantiles("accel_busy", r["busy_q"]))
        out[r["run_id"]] = stats
    return out


def top_findings(db: Any, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per run, its worst stored finding (post-run ones supersede live ones), in one query."""
    from agent.analysis.finding import finding_from_row, sort_findings
    from agent.runs import FINDING_COLUMNS

    if not run_ids:
        return {}
    marks = ", ".join("?" for _ in run_ids)
    rows = db.execute(
        f"SELECT run_id, {FINDING_COLUMNS} FROM findings WHERE run_id IN ({marks})",
        list(run_ids),
    ).fetchall()
    by_run: dict[str, list[Any]] = {}
    for row in rows:
        by_run.setdefault(row[0], []).append(row[1:])
    out = {}
    for run_id, found in by_run.items():
        final = [f for f in found if not f[8]] or found
        worst = sort_findings(finding_from_row(f) for f in final)[0]
        out[run_id] = {
            "rule": worst.rule,
            "severity": worst.severity,
            "entity": worst.entity,
            "summary": worst.summary,
            "count": len(final),
        }
    return out
