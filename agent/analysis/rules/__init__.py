"""Every rule, one module per family; ``ALL_RULES`` is the order findings are computed in."""

from __future__ import annotations

from agent.analysis.engine import Rule
from agent.analysis.rules import (
    checkpoint,
    efficiency,
    fabric,
    hang,
    hardware,
    host_bound,
    memory,
    storage,
    straggler,
    throttle,
    tpu,
    transfer,
    utilization,
)

ALL_RULES: tuple[Rule, ...] = (
    *hang.RULES,
    *hardware.RULES,
    *utilization.RULES,
    *host_bound.RULES,
    *tpu.RULES,
    *transfer.RULES,
    *efficiency.RULES,
    *throttle.RULES,
    *memory.RULES,
    *straggler.RULES,
    *checkpoint.RULES,
    *fabric.RULES,
    *storage.RULES,
)
RULES_BY_ID: dict[str, Rule] = {r.id: r for r in ALL_RULES}
