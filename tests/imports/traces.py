"""Synthetic traces written the way other tools write them: per-rank step times, and a
per-operation trace of a synchronous pipeline + data-parallel job (Megatron-style columns)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np

Factor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def write_table(path: Path, columns: dict[str, np.ndarray]) -> Path:
    """Write numpy columns as CSV, Parquet or JSON lines (by the suffix) through DuckDB."""
    fmt = {".csv": "csv", ".parquet": "parquet", ".jsonl": "json"}[path.suffix]
    con = duckdb.connect()
    try:
        trace_rows = columns  # noqa: F841 - read by DuckDB's replacement scan
        con.execute(f"COPY (SELECT * FROM trace_rows) TO '{path}' (FORMAT {fmt})")
    finally:
        con.close()
    return path


def step_times(
    *,
    ranks: int = 8,
    seconds: float = 3600.0,
    every: float = 10.0,
    step_s: float = 0.5,
    noise: float = 0.03,
    factor: Factor | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per rank and sample: ``rank, time, step_time``; ``factor(rank, t)`` slows ranks down."""
    rng = np.random.default_rng(seed)
    t = np.arange(every, seconds + every / 2, every)
    r = np.arange(ranks)
    grid_r, grid_t = np.meshgrid(r, t, indexing="ij")
    scale = np.ones(grid_r.shape) if factor is None else factor(grid_r, grid_t)
    values = step_s * scale * (1 + noise * rng.standard_normal(grid_r.shape))
    return {
        "rank": grid_r.ravel(),
        "time": grid_t.ravel(),
        "step_time": values.ravel(),
    }


def sync_op_trace(
    *,
    stages: int = 2,
    dp: int = 4,
    steps: int = 60,
    microbatches: int = 4,
    forward_s: float = 0.010,
    backward_s: float = 0.020,
    comm_s: float = 0.005,
    slow_rank: int | None = 5,
    slow_backward: float = 1.8,
    slow_from_step: int = 20,
    noise: float = 0.02,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], float, float]:
    """Ops of a synchronous job: per step each rank runs its microbatches' forward and
    backward compute, then waits in the gradient all-reduce until the slowest rank is done, so
    every rank's step takes the same time. Returns (columns, seconds the slow rank cost the
    job, the job's total seconds)."""
    rng = np.random.default_rng(seed)
    n_ranks = stages * dp
    ranks = np.arange(n_ranks)
    fwd = forward_s * (1 + noise * rng.standard_normal((steps, n_ranks, microbatches)))
    bwd = backward_s * (1 + noise * rng.standard_normal((steps, n_ranks, microbatches)))
    if slow_rank is not None:
        bwd[slow_from_step:, slow_rank, :] *= slow_backward
    compute = (fwd + bwd).sum(axis=2)  # (steps, ranks)
    step_len = compute.max(axis=1) + comm_s
    step_start = np.concatenate([[0.0], np.cumsum(step_len)[:-1]])
    # op order per rank and step: F0 B0 F1 B1 ... then the all-reduce
    durations = np.stack([fwd, bwd], axis=3).reshape(steps, n_ranks, 2 * microbatches)
    offsets = np.concatenate(
        [np.zeros((steps, n_ranks, 1)), np.cumsum(durations, axis=2)[:, :, :-1]], axis=2
    )
    starts = step_start[:, None, None] + offsets
    comm_start = step_start[:, None] + compute
    comm_len = step_start[:, None] + step_len[:, None] - comm_start
    optypes = np.array(["forward-compute", "backward-compute"] * microbatches, dtype=object)
    mb = np.repeat(np.arange(microbatches), 2)

    def grid(values: np.ndarray) -> np.ndarray:
        return np.broadcast_to(values, (steps, n_ranks, 2 * microbatches)).ravel()

    step_ids = np.arange(steps)[:, None, None]
    rank_ids = ranks[None, :, None]
    cols = {
        "rank": np.concatenate([grid(rank_ids), np.tile(ranks, steps)]),
        "dp_rank": np.concatenate([grid(rank_ids % dp), np.tile(ranks % dp, steps)]),
        "stage": np.concatenate([grid(rank_ids // dp), np.tile(ranks // dp, steps)]),
        "step": np.concatenate([grid(step_ids), np.repeat(np.arange(steps), n_ranks)]),
        "optype": np.concatenate(
            [grid(optypes[None, None, :]), np.full(steps * n_ranks, "grads-reduce-scatter")]
        ).astype(object),
        "start_ts": np.concatenate([starts.ravel(), comm_start.ravel()]),
        "duration": np.concatenate([durations.ravel(), comm_len.ravel()]),
        "mb_id": np.concatenate([grid(mb[None, None, :]), np.full(steps * n_ranks, -1)]),
    }
    median = np.median(compute, axis=1)
    lost = float(np.sum(compute.max(axis=1) - median)) if slow_rank is not None else 0.0
    return cols, lost, float(step_len.sum())
