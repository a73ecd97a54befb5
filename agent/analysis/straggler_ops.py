"""The slow rank of a synchronous job, from a per-operation trace (``op_trace``).

In synchronous training every rank's step takes as long as the slowest one's, so step times
cannot tell the straggler. Its own compute can: per step, each rank's forward and backward
compute time against the median of the ranks of the same pipeline stage (same layers, same
work). A rank whose compute is slower than its stage's for consecutive steps is the straggler;
every rank waits for it at the next synchronisation, so each step costs the job about the
rank's excess compute (``comp - peers``), a first-order estimate of what the what-if analysis
of Lin et al. (OSDI 2025) simulates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.analysis.engine import Context
from agent.analysis.frame_sql import time_bounds
from agent.analysis.straggler_scores import islands
from agent.analysis.thresholds import OPS_MIN_STEPS, OPS_SCORE, STRAGGLER_MIN_RANKS
from agent.tables import has_table

#: Optypes that are a rank's own compute: forward / backward passes, not communication.
COMPUTE_OPTYPE = r"(forward|backward|fwd|bwd)"
COMMUNICATION_OPTYPE = r"send|recv|reduce|gather|scatter|broadcast|all.?to.?all|comm|sync"


@dataclass(frozen=True)
class SlowCompute:
    """One rank's run of steps with slower compute than its stage's peers."""

    rank: int
    stage: int | None
    dp_rank: int | None
    first_step: int
    last_step: int
    start: float
    end: float
    comp: float  # the rank's mean compute per step (s)
    peers: float  # its stage peers' median (s)
    peer_count: int
    lost_s: float
    job_s: float  # the job's time over the analysed steps
    by_optype: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.peers / self.comp


def has_ops(ctx: Context) -> bool:
    """Whether the store has an op trace for this run (files before schema 3 have none)."""
    if not has_table(ctx.con, "op_trace"):
        return False
    row = ctx.con.execute(
        "SELECT count(*) FROM (SELECT 1 FROM op_trace WHERE run_id = ? LIMIT 1)",
        [ctx.info.window.run_id],
    ).fetchall()[0][0]
    return bool(row)


def slow_compute(ctx: Context) -> list[SlowCompute]:
    """The ranks whose compute is slower than their stage's, per run of consecutive steps."""
    where, params = _window(ctx)
    base = f"""
        WITH o AS (
            SELECT rank, stage, dp_rank, step, optype, epoch(ts) AS t, duration,
                   regexp_matches(lower(optype), '{COMPUTE_OPTYPE}')
                   AND NOT regexp_matches(lower(optype), '{COMMUNICATION_OPTYPE}') AS compute
            FROM op_trace WHERE {where})"""
    rows = ctx.con.execute(
        base
        + """,
        r AS (SELECT rank, any_value(stage) AS stage, any_value(dp_rank) AS dp_rank, step,
                     min(t) AS t0, max(t + duration) AS t1,
                     sum(duration) FILTER (WHERE compute) AS comp
              FROM o GROUP BY rank, step),
        s AS (SELECT step, min(t0) AS s0, max(t1) AS s1 FROM r GROUP BY step),
        p AS (SELECT *, median(comp) OVER (PARTITION BY stage, step) AS peers,
                     count(comp) OVER (PARTITION BY stage, step) AS n FROM r)
        SELECT rank, stage, dp_rank, step, s0, s1, comp, peers, n
        FROM p JOIN s USING (step) WHERE comp > 0 ORDER BY rank, step""",
        params,
    ).fetchnumpy()
    if len(rows["rank"]) == 0:
        return []
    by_optype = _optype_ratios(ctx, base, params)
    steps = np.unique(rows["step"])
    ranks = np.unique(rows["rank"])
    r_i = np.searchsorted(ranks, rows["rank"])
    s_i = np.searchsorted(steps, rows["step"])
    shape = (len(ranks), len(steps))
    comp, peers = np.full(shape, np.nan), np.full(shape, np.nan)
    count = np.zeros(shape)
    comp[r_i, s_i], peers[r_i, s_i], count[r_i, s_i] = rows["comp"], rows["peers"], rows["n"]
    s0, s1 = np.full(len(steps), np.nan), np.full(len(steps), np.nan)
    s0[s_i], s1[s_i] = rows["s0"], rows["s1"]
    job_s = float(np.nansum(s1 - s0))
    with np.errstate(invalid="ignore", divide="ignore"):
        flags = (count >= STRAGGLER_MIN_RANKS) & (peers / comp < OPS_SCORE)
    stage = dict(zip(rows["rank"].tolist(), rows["stage"].tolist()))
    dp = dict(zip(rows["rank"].tolist(), rows["dp_rank"].tolist()))
    out = []
    for row, c0, c1 in zip(*islands(flags, max_gap=1)):
        sel = flags[row, c0 : c1 + 1]
        if sel.sum() < OPS_MIN_STEPS:
            continue
        excess = comp[row, c0 : c1 + 1] - peers[row, c0 : c1 + 1]
        span = (s1 - s0)[c0 : c1 + 1]
        lost = float(np.nansum(np.clip(np.where(sel, excess, 0.0), 0.0, span)))
        rank = int(ranks[row])
        out.append(
            SlowCompute(
                rank,
                _int(stage.get(rank)),
                _int(dp.get(rank)),
                int(steps[c0]),
                int(steps[c1]),
                float(s0[c0]),
                float(s1[c1]),
                float(np.nanmean(comp[row, c0 : c1 + 1][sel])),
                float(np.nanmean(peers[row, c0 : c1 + 1][sel])),
                int(np.nanmax(count[row, c0 : c1 + 1])) - 1,
                lost,
                job_s,
                by_optype.get(rank, {}),
            )
        )
    return out


def _optype_ratios(ctx: Context, base: str, params: dict[str, Any]) -> dict[int, dict[str, float]]:
    """Per rank and compute optype: its median per-step time over its stage peers' median."""
    rows = ctx.con.execute(
        base
        + """,
        ot AS (SELECT rank, stage, step, optype, sum(duration) AS d FROM o WHERE compute
               GROUP BY ALL),
        op AS (SELECT *, median(d) OVER (PARTITION BY stage, step, optype) AS pd FROM ot)
        SELECT rank, optype, median(d / pd) AS ratio FROM op WHERE pd > 0 GROUP BY ALL""",
        params,
    ).fetchall()
    out: dict[int, dict[str, float]] = {}
    for rank, optype, ratio in rows:
        out.setdefault(int(rank), {})[str(optype)] = float(ratio)
    return out


def _window(ctx: Context) -> tuple[str, dict[str, Any]]:
    window = ctx.info.window
    where = ["run_id = $run"]
    params: dict[str, Any] = {"run": window.run_id}
    where += time_bounds(window.start, window.end, params)
    return " AND ".join(where), params


def _int(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return int(value)
