"""How the straggler findings say it: which ranks, from when to when, how much slower, at what
cost. Shared by the step-time, op-trace and device views so they read alike."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from agent.analysis.engine import Context
from agent.analysis.rules.common import duration, pct
from agent.analysis.time_axis import TimeAxis, run_time_axis

PEERS = "the median of its peers"
#: Where the scores come from (every straggler view's evidence names it).
SCORE_SOURCE = "NVIDIA resiliency-ext straggler scores, against the peers' median"


def slower(ratio: float, whom: str = PEERS) -> str:
    """``31% slower than the median of its peers``; never a negative "slower"."""
    if ratio >= 1.995:
        return f"{ratio:.1f}x as slow as {whom}"
    if ratio >= 1.005:
        return f"{(ratio - 1) * 100:.0f}% slower than {whom}"
    if ratio > 0.995:
        return f"as fast as {whom}"
    return f"{(1 - ratio) * 100:.0f}% faster than {whom}"


def rank_numbers(entities: Sequence[str]) -> list[int | str]:
    out: list[int | str] = []
    for e in entities:
        m = re.fullmatch(r"[a-z]*?(\d+)", e)
        out.append(int(m.group(1)) if m else e)
    return out


def ranks_text(entities: Sequence[str]) -> str:
    """``rank3``, ``ranks 0 and 1``, ``ranks 2-9``, ``ranks 0, 3 and 6-9``."""
    if len(entities) == 1:
        return entities[0]
    numbers = rank_numbers(entities)
    if not all(isinstance(n, int) for n in numbers):
        return _joined(list(entities))
    ints = sorted(n for n in numbers if isinstance(n, int))
    parts: list[str] = []
    start = ints[0]
    for prev, cur in zip(ints, [*ints[1:], None]):
        if cur is None or cur != prev + 1:
            if prev - start >= 2:
                parts.append(f"{start}-{prev}")
            else:  # a pair reads better as "0 and 1" than as "0-1"
                parts += [str(n) for n in range(start, prev + 1)]
            start = cur if cur is not None else start
    return "ranks " + _joined(parts)


def _joined(parts: list[str]) -> str:
    if len(parts) > 8:
        parts = [*parts[:6], f"{len(parts) - 6} more"]
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def percent_range(ratios: Sequence[float], word: str) -> str:
    """``10% slower`` or ``8-11% faster`` for a group's levels relative to its peers."""
    values = sorted(abs(r - 1) * 100 for r in ratios)
    lo, hi = round(values[0]), round(values[-1])
    return f"{lo}% {word}" if lo == hi else f"{lo}-{hi}% {word}"


def cost_text(lost_s: float, run_s: float, *, synchronous: bool | None = None) -> str:
    """What a slow rank cost: every synchronised step waits for the slowest rank."""
    share = f" ({pct(lost_s / run_s)} of the run)" if run_s > 0 else ""
    if synchronous:
        return f"every step waits for it, which cost the job about {duration(lost_s)}{share}"
    return f"if the ranks synchronise every step, that cost the job about {duration(lost_s)}{share}"


def time_axis(ctx: Context) -> TimeAxis:
    """The run's axis; the clock where the connection has no ``runs`` (a live window kept in
    memory holds only samples, events and entities of a recording)."""
    if not has_relation(ctx, "runs"):
        return TimeAxis(0.0)
    return run_time_axis(ctx.con, ctx.info.window.run_id)


def has_relation(ctx: Context, name: str) -> bool:
    return bool(
        ctx.con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND NOT internal "
            "AND database_name = current_database() UNION ALL SELECT count(*) "
            "FROM duckdb_tables() WHERE table_name = ? AND database_name = current_database()",
            [name, name],
        )
        .fetchnumpy()["count_star()"]
        .sum()
    )


def value_text(value: float) -> str:
    """A step time as the trace wrote it (3 significant digits; units vary by trace)."""
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def span_offsets(axis: TimeAxis, start: Any, end: Any) -> dict[str, float]:
    """Start and end in seconds from the run's (trace's) start: the trace's own time axis."""
    return {"t_start_s": round(axis.offset(start), 1), "t_end_s": round(axis.offset(end), 1)}
