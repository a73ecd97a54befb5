"""SQL text helpers shared by the core and the analysis: string literals and ``IN`` lists."""

from __future__ import annotations

from collections.abc import Iterable


def q(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def in_list(names: Iterable[str]) -> str:
    """Quoted, comma-separated: the inside of ``IN (...)``; ``NULL`` when empty (matches none)."""
    return ", ".join(q(n) for n in names) or "NULL"
