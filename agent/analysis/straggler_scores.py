"""Per-rank step times in windows, and the scores the straggler rules read (NumPy, no loops).

The scores follow NVIDIA resiliency-ext's straggler detection (a score is a reference time over
the rank's time; 1 is as fast as the reference, 0.5 twice as slow) with the median of the
peers as the reference instead of the fastest rank, so one fast rank does not make every other
one a straggler:

* ``rel`` = the rank's step time / its peers' level in that window (the *relative* score is
  ``1 / rel``). The level is the median over ranks of each rank's time divided by its usual
  offset (``base``), so a group of ranks that is always slower, or several ranks slowing down
  at once, does not drag the reference with it.
* ``dev`` = ``rel / base``: the rank's time against its own usual speed relative to its peers
  (the *individual* score is ``1 / dev``; resiliency-ext uses the rank's best time, which a
  noisy rank beats once and is then flagged for ever).
* ``base`` is the smaller of the rank's median ``rel`` over the whole run and over its first
  quarter, so a slowdown lasting most of the run is still measured against the rank's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.analysis.engine import Context
from agent.analysis.frame import FrameInfo
from agent.analysis.thresholds import (
    STRAGGLER_LIVE_WINDOW_S,
    STRAGGLER_LOOKBACK_S,
    STRAGGLER_MIN_RANKS,
    STRAGGLER_WINDOW_S,
    SYNC_SPREAD,
)
from agent.catalog.steps import SOURCE as STEPS_SOURCE

#: A rank's usual speed needs at least this many windows of its first quarter.
MIN_BASE_WINDOWS = 4


@dataclass(frozen=True)
class RankWindows:
    """Ranks x windows of mean step time (NaN: no step in that window) and their scores."""

    ranks: tuple[str, ...]
    #: Window starts and ends (epoch s); the last ends at the last step, not past it.
    starts: np.ndarray
    ends: np.ndarray
    window_s: float
    x: np.ndarray
    base: np.ndarray
    #: Ranks x windows: the median of the other ranks' base-corrected step times (the step
    #: time of a typical peer at that moment).
    level: np.ndarray
    #: Median per-sample step time of each rank (what an operator reads off the trace).
    medians: dict[str, float]
    #: Index of the first window of the analysed span (live: earlier ones are history).
    first_analysed: int = 0

    @property
    def rel(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.x / self.level

    @property
    def dev(self) -> np.ndarray:
        return self.rel / self.base[:, None]

    @property
    def synchronous(self) -> bool:
        """Every rank's step takes as long as the others' (they wait for the slowest)."""
        full = self.x[:, np.isfinite(self.x).sum(0) >= STRAGGLER_MIN_RANKS]
        if full.size == 0:
            return False
        with np.errstate(invalid="ignore", divide="ignore"):
            spread = (np.nanmax(full, 0) - np.nanmin(full, 0)) / nanmedian(full, 0)
        spread = spread[np.isfinite(spread)]
        return bool(spread.size) and float(np.median(spread)) < SYNC_SPREAD

    def persistent(self) -> tuple[np.ndarray, np.ndarray]:
        """Each rank's typical ``rel`` over the analysed windows and over their first quarter."""
        rel = self.rel[:, self.first_analysed :]
        first = rel[:, : max(MIN_BASE_WINDOWS, rel.shape[1] // 4)]
        return nanmedian(rel, 1), nanmedian(first, 1)


def nanmedian(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian`` that returns NaN for an all-NaN slice without a RuntimeWarning (a rank
    with no step in a window is expected; warning filters are process-global, so not used)."""
    empty = ~np.isfinite(a).any(axis=axis)
    filled = np.where(np.expand_dims(empty, axis), 0.0, a)
    out = np.nanmedian(filled, axis=axis)
    return np.where(empty, np.nan, out)


def window_s(ctx: Context, spacing: float) -> float:
    """At least three step spacings per window, never below a bucket."""
    floor = STRAGGLER_LIVE_WINDOW_S if ctx.live else STRAGGLER_WINDOW_S
    return float(max(floor, ctx.info.bucket_s, 3 * spacing))


_cache: tuple[FrameInfo, RankWindows | None] | None = None


def rank_windows(ctx: Context) -> RankWindows | None:
    """The step-time windows of the context's frames (built once per analysis pass), or None
    with fewer than ``STRAGGLER_MIN_RANKS`` ranks."""
    global _cache
    cached = _cache
    if cached is not None and cached[0] is ctx.info:
        return cached[1]
    built = _build(ctx) if len(ctx.info.ranks) >= STRAGGLER_MIN_RANKS else None
    _cache = (ctx.info, built)
    return built


def _build(ctx: Context) -> RankWindows | None:
    spacing = ctx.con.execute("""
        SELECT median(gap) FROM (
            SELECT t - lag(t) OVER (PARTITION BY entity ORDER BY t) AS gap
            FROM aw_steps WHERE step_time IS NOT NULL)""").fetchall()[0][0]
    width = window_s(ctx, float(spacing or ctx.info.bucket_s))
    rows = "SELECT entity, t, step_time AS v, step_n AS n FROM aw_steps WHERE step_time IS NOT NULL"
    params: dict[str, Any] = {}
    window = ctx.info.window
    if ctx.live and window.start is not None:
        # History before the analysed window: the rank's usual speed relative to its peers.
        rows += f"""
            UNION ALL
            SELECT entity, epoch(ts) AS t, value AS v, 1 AS n FROM samples
            WHERE run_id = $run AND source = '{STEPS_SOURCE}' AND metric = 'step.time'
              AND ts >= $from AND ts < $start"""
        params = {
            "run": window.run_id,
            "start": window.start,
            "from": _minus(window.start, STRAGGLER_LOOKBACK_S),
        }
        origin_sql = "0.0"  # windows on a fixed grid, stable from one pass to the next
    else:
        origin_sql = "min(t) OVER ()"
    data = ctx.con.execute(
        f"""
        WITH r AS ({rows}), o AS (SELECT *, {origin_sql} AS origin FROM r)
        SELECT entity, CAST(floor((t - origin) / {width}) AS BIGINT) AS k,
               any_value(origin) AS origin, sum(v * n) / sum(n) AS x, max(t) AS last
        FROM o GROUP BY entity, k""",
        params,
    ).fetchnumpy()
    if len(data["k"]) == 0:
        return None
    ranks = ctx.info.ranks
    index = {r: i for i, r in enumerate(ranks)}
    keep = np.array([e in index for e in data["entity"]], dtype=bool)
    rows_i = np.array([index.get(e, -1) for e in data["entity"]])[keep]
    k = data["k"][keep]
    k0 = int(k.min())
    cols = k - k0
    n_windows = int(cols.max()) + 1
    x = np.full((len(ranks), n_windows), np.nan)
    x[rows_i, cols] = data["x"][keep]
    origin = float(data["origin"][0])
    starts = origin + (k0 + np.arange(n_windows)) * width
    last = float(data["last"].max()) + float(spacing or 0.0)
    ended = _run_end(ctx)
    if ended is not None and ended > starts[-1]:
        last = min(last, float(ended))  # a window ends with the run, not past it
    ends = np.minimum(starts + width, last)
    ends = np.maximum(ends, starts + min(width, float(spacing or width)))
    base, level = _scores(x)
    first_analysed = 0
    if ctx.live and window.start is not None:
        start_s = _epoch(window.start)
        first_analysed = int(np.searchsorted(starts + width, start_s, side="right"))
    medians = _rank_medians(ctx)
    return RankWindows(ranks, starts, ends, width, x, base, level, medians, first_analysed)


def peers_median(y: np.ndarray) -> np.ndarray:
    """Per cell of ranks x windows, the median of the *other* ranks' values in that window
    (NaN-aware): sort each window once, then skip the cell's own position."""
    n = np.sum(np.isfinite(y), 0)  # (K,)
    order = np.argsort(y, axis=0)  # NaN sort last
    s = np.take_along_axis(y, order, 0)
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.arange(y.shape[0])[:, None].repeat(y.shape[1], 1), 0)
    rows = y.shape[0]
    j1 = np.broadcast_to((n - 2) // 2, y.shape)
    j2 = np.broadcast_to((n - 1) // 2, y.shape)

    def other(j: np.ndarray) -> np.ndarray:
        idx = np.clip(j + (j >= pos), 0, rows - 1)
        return np.take_along_axis(s, idx, 0)

    out = (other(j1) + other(j2)) / 2
    return np.where(np.isfinite(y) & (n >= STRAGGLER_MIN_RANKS)[None, :], out, np.nan)


def _run_end(ctx: Context) -> float | None:
    """When the run ended (epoch s), if the connection knows its runs (a live in-memory
    window does not, and a live run has not ended)."""
    known = ctx.con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE view_name = 'runs' AND NOT internal "
        "AND database_name = current_database()"
    ).fetchall()[0][0]
    if not known:
        return None
    row = ctx.con.execute(
        "SELECT max(epoch(ended)) FROM runs WHERE run_id = ?", [ctx.info.window.run_id]
    ).fetchall()[0][0]
    return None if row is None else float(row)


def _scores(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(base per rank, peers' level per rank and window): the base in two rounds, each
    against the last level."""
    count = np.sum(np.isfinite(x), 0)
    level = np.where(count >= STRAGGLER_MIN_RANKS, nanmedian(x, 0), np.nan)
    base = np.ones(x.shape[0])
    first = max(MIN_BASE_WINDOWS, x.shape[1] // 4)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(2):
            rel = x / level
            base = np.fmin(nanmedian(rel, 1), nanmedian(rel[:, :first], 1))
            base = np.where(np.isfinite(base) & (base > 0), base, 1.0)
            norm = nanmedian(x / base[:, None], 0)
            level = np.where(count >= STRAGGLER_MIN_RANKS, norm, np.nan)
        # the reference of each rank: the median of its peers' base-corrected times
        return base, peers_median(x / base[:, None])


def _rank_medians(ctx: Context) -> dict[str, float]:
    rows = ctx.con.execute(
        "SELECT entity, median(step_time) FROM aw_steps WHERE step_time IS NOT NULL GROUP BY entity"
    ).fetchall()
    return {e: float(v) for e, v in rows if v is not None}


def _epoch(value: Any) -> float:
    from datetime import timezone

    return value.replace(tzinfo=timezone.utc).timestamp()


def _minus(value: Any, seconds: float) -> Any:
    from datetime import timedelta

    return value - timedelta(seconds=seconds)


def islands(flags: np.ndarray, *, max_gap: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True per row of a boolean matrix, runs at most ``max_gap`` False apart joined:
    (row, first column, last column) arrays."""
    rows, cols = flags.shape
    padded = np.zeros((rows, cols + 2), dtype=bool)
    padded[:, 1:-1] = flags
    d = np.diff(padded.astype(np.int8), axis=1)
    r_start, c_start = np.nonzero(d == 1)
    r_end, c_end = np.nonzero(d == -1)  # both in row-major order, so they pair up
    c_end = c_end - 1
    if len(r_start) == 0:
        return r_start, c_start, c_end
    gap = c_start[1:] - c_end[:-1] - 1
    join = (r_start[1:] == r_end[:-1]) & (gap <= max_gap)
    keep_start = np.concatenate([[True], ~join])
    keep_end = np.concatenate([~join, [True]])
    return r_start[keep_start], c_start[keep_start], c_end[keep_end]
