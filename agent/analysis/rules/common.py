"""Small helpers the rule modules share: accelerator filters, wording of values and durations."""

from __future__ import annotations

from typing import Any

from agent.analysis.engine import Context, Episode

#: Restricts a query over ``aw_accel`` to the job's accelerators (pass ``job_params(ctx)``).
JOB_FILTER = "entity IN (SELECT unnest(CAST($accels AS VARCHAR[])))"


def job_params(ctx: Context, **extra: Any) -> dict[str, Any]:
    return {"accels": list(ctx.info.job_accelerators), **extra}


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def rate(bytes_per_s: float | None) -> str:
    if bytes_per_s is None:
        return "n/a"
    for unit, size in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bytes_per_s >= size:
            return f"{bytes_per_s / size:.1f} {unit}"
    return f"{bytes_per_s:.0f} B/s"


def entities_text(names: list[str] | tuple[str, ...]) -> str:
    return (
        ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} and {len(names) - 3} more"
    )


def by_entity(episodes: list[Episode]) -> dict[str, list[Episode]]:
    """Episodes grouped per entity, in order."""
    out: dict[str, list[Episode]] = {}
    for e in episodes:
        out.setdefault(e.entity, []).append(e)
    return out
