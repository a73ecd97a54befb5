"""Which series the analysis reads: the metrics its frame aggregates and the label conditions
that pick their series. Shared by the frame (:mod:`agent.analysis.frame`, what it aggregates)
and the writer (:mod:`agent.store_buckets`, which series get stored buckets), so the store
does not depend on the analysis that reads it.

Host, process and step columns map to catalog names, checked at import; accelerator metrics come
from the plan (:mod:`agent.accelerators`), fabric, network and mount metrics from their roles.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.accelerators import AcceleratorPlan, accelerator_plan
from agent.catalog import CATALOG
from agent.sql_text import in_list

HOST_COLUMNS: Mapping[str, str] = {
    "cpu": "host.cpu.utilization",
    "iowait": "host.cpu.iowait",
    "cpu_count": "host.cpu.count",
    "mem_util": "host.memory.utilization",
    "swap_in": "host.swap.in",
}
#: (alias, aggregate, entity prefix, metric) for columns summed or maxed over host entities.
HOST_SPREAD_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("core_max", "max", "cpu", "host.cpu.utilization"),
    ("disk_read", "sum", "disk:", "host.disk.read_bytes"),
    ("disk_write", "sum", "disk:", "host.disk.write_bytes"),
    ("disk_busy", "max", "disk:", "host.disk.busy_time"),
    ("ib_rx", "sum", "ib:", "host.ib.rx_bytes"),
    ("ib_tx", "sum", "ib:", "host.ib.tx_bytes"),
)
PROCESS_CPU = "process.cpu.utilization"
PROCESS_READ = "process.io.read_bytes"
PROCESS_WRITE = "process.io.write_bytes"
STEP_TIME = "step.time"
STEP_COUNT = "step.count"

_ALL_NAMES = (
    *HOST_COLUMNS.values(),
    *(c[3] for c in HOST_SPREAD_COLUMNS),
    PROCESS_CPU,
    PROCESS_READ,
    PROCESS_WRITE,
    STEP_TIME,
    STEP_COUNT,
)
for _name in _ALL_NAMES:  # fail at import if a column refers to a metric the catalog lacks
    CATALOG[_name]
#: The host, process and step metrics analysed; accelerator metrics come from the plan.
BASE_METRICS: tuple[str, ...] = tuple(dict.fromkeys(_ALL_NAMES))
#: Roles whose metrics (of any source) the frame aggregates too, for the rules that read them
#: from ``aw_agg`` by role (fabric ports, network interfaces, the job's mounts: see
#: ``rules/fabric.py``'s ``bucketed``) instead of scanning the samples again.
AGGREGATED_ROLES = ("port.rx_bytes", "port.tx_bytes", "port.errors", "port.cnp", "port.ecn",
                    "port.up", "port.rate", "port.rate.max", "interface.rx_bytes",
                    "interface.tx_bytes", "interface.speed", "interface.up",
                    "mount.read_bytes", "mount.write_bytes", "mount.latency",
                    "mount.rtt")  # fmt: skip


def role_metrics() -> tuple[str, ...]:
    """The metrics of :data:`AGGREGATED_ROLES` (read when the frame is built: a source
    registered later declares its own)."""
    return tuple(dict.fromkeys(m.name for r in AGGREGATED_ROLES for m in CATALOG.by_role(r)))


def analysed_series(plan: AcceleratorPlan) -> tuple[tuple[str, ...], list[str]]:
    """The metrics the frame aggregates and the label conditions (SQL over ``series`` or
    ``samples`` columns) that pick their series."""
    by_role = role_metrics()
    analysed = tuple(dict.fromkeys([*BASE_METRICS, *plan.metrics, *by_role]))
    # An accelerator's parts (gpu0/nvlink3, gpu0/pid42, gpu0/mig1) carry detail no rule reads
    # (InfiniBand ports, ib:mlx5_0/1, and mounts, mount:/data, do count). Metric
    # names are catalog constants, inlined so DuckDB filters the scan instead of joining.
    return analysed, [
        f"metric IN ({in_list(analysed)})",
        plan.part_filter((*BASE_METRICS, *by_role)),
    ]


def analysed_series_where() -> str:
    """SQL over ``series``' columns picking the series the frame aggregates (of any run): the
    writer keeps buckets of these (:mod:`agent.store_buckets`)."""
    return " AND ".join(analysed_series(accelerator_plan())[1])
