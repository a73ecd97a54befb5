"""SQL text helpers the frame builders share: quoting, the pivot's one-metric aggregate and
an analysis window's time bounds."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from agent.sql_text import in_list, q

__all__ = ["in_list", "pick", "q", "time_bounds"]


def pick(
    alias: str, metric_name: str, agg: str = "any_value", col: str = "val", extra: str = ""
) -> str:
    """One pivot column: ``agg(col)`` over the rows of ``metric_name``."""
    return f"{agg}({col}) FILTER (WHERE metric = {q(metric_name)}{extra}) AS {alias}"


def time_bounds(start: Any, end: Any, params: MutableMapping[str, Any]) -> list[str]:
    """The ``ts`` conditions of a window (``[start, end)``, either open), their values bound
    as ``$start`` / ``$end`` in ``params``."""
    where = []
    if start is not None:
        where.append("ts >= $start")
        params["start"] = start
    if end is not None:
        where.append("ts < $end")
        params["end"] = end
    return where
