"""Fabric source: InfiniBand / RoCE ports from sysfs, ``<sys_root>/class/infiniband``.

Parsing is a pure function of the tree (:func:`read_infiniband`), so tests point ``sys_root``
at a fake one. A machine without InfiniBand has no such directory: the source then records
nothing and costs one ``stat`` per tick; ports that appear later are picked up.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.catalog.fabric import ENTITY_PREFIX, METRICS, SOURCE
from agent.model import Batch, BatchBuilder
from agent.source import Collector, EntityKind, SourceSpec


def read_infiniband(sys_root: Path) -> dict[str, tuple[int, int]]:
    """``{"mlx5_0/1": (rx_bytes, tx_bytes)}`` from sysfs port counters (which count 4-byte words).

    A port whose counters are missing or unreadable (``N/A (no PMA)``) is left out.
    """
    out: dict[str, tuple[int, int]] = {}
    base = sys_root / "class" / "infiniband"
    if not base.is_dir():
        return out
    for counters in sorted(base.glob("*/ports/*/counters")):
        try:
            rx = int((counters / "port_rcv_data").read_text().strip()) * 4
            tx = int((counters / "port_xmit_data").read_text().strip()) * 4
        except (OSError, ValueError):
            continue
        device, port = counters.parent.parent.parent.name, counters.parent.name
        out[f"{device}/{port}"] = (rx, tx)
    return out


class FabricCollector(Collector):
    """Cumulative bytes per InfiniBand port; rates are left to the store."""

    source = SOURCE

    def __init__(self, sys_root: str | os.PathLike[str] = "/sys") -> None:
        self.sys_root = Path(sys_root)

    def collect(self, now: float) -> Batch:
        b = BatchBuilder(self.source, now)
        for port, (rx, tx) in read_infiniband(self.sys_root).items():
            entity = f"{ENTITY_PREFIX}{port}"
            b.add(entity, "host.ib.rx_bytes", rx)
            b.add(entity, "host.ib.tx_bytes", tx)
        return b.build()


SPEC = SourceSpec(
    name=SOURCE,
    label="Fabric (InfiniBand, RoCE)",
    metrics=tuple(METRICS),
    entity_kinds=(EntityKind("port", "ib:(?P<port>.+)", {"system.device": "{port}"}),),
    collector=FabricCollector,
    start_order=20,
)
