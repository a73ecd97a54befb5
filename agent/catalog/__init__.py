"""The one metric catalog: every metric is declared here once and read by store, TUI and exporters.

A sample is ``(ts, source, entity, metric, value)``. The metric name says *what* is measured
(never its unit); ``unit`` uses UCUM codes as OpenTelemetry does (``1`` for ratios 0..1,
``By``, ``By/s``, ``s``, ``W``, ``J``, ``Cel``, ``MHz``). ``counter`` metrics are cumulative
and only grow (until a reset); ``gauge`` metrics are instantaneous or averaged over the interval.

Entities name the thing measured, per source:
  host: ``host``, ``cpu3``, ``disk:nvme0n1``, ``net:eth0``, ``ib:mlx5_0/1``
  process: the pid as text, e.g. ``4242``
  nvml: ``gpu0``, ``gpu0/mig1``, ``gpu0/nvlink3``, ``gpu0/pid4242``
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from agent.catalog.roles import ROLES

Kind = Literal["gauge", "counter"]


@dataclass(frozen=True)
class Metric:
    """One metric's declaration: the single source of truth for its name, unit and meaning."""

    name: str
    unit: str
    kind: Kind
    description: str
    source: str
    otel_name: str
    otel_attributes: Mapping[str, str] = field(default_factory=dict)
    dcgm_name: str | None = None
    #: What the metric means whatever the driver (``accelerator.busy``, ``port.rx_bytes``):
    #: analysis, TUI, report and exporters select by role, never by source. See ``roles.py``.
    role: str | None = None

    @property
    def is_counter(self) -> bool:
        return self.kind == "counter"


def metric(
    name: str,
    unit: str,
    kind: Kind,
    description: str,
    *,
    source: str,
    otel: str | None = None,
    attrs: Mapping[str, str] | None = None,
    dcgm: str | None = None,
    role: str | None = None,
) -> Metric:
    """Declare a metric; without ``otel`` it exports under the ``accelwatch.`` namespace."""
    return Metric(
        name=name,
        unit=unit,
        kind=kind,
        description=description,
        source=source,
        otel_name=otel or f"accelwatch.{name}",
        otel_attributes=MappingProxyType(dict(attrs or {})),
        dcgm_name=dcgm,
        role=role,
    )


class Catalog:
    """An immutable name → :class:`Metric` index with lookups by source."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        index: dict[str, Metric] = {}
        for m in metrics:
            if m.name in index:
                raise ValueError(f"metric {m.name!r} declared twice")
            if m.role is not None and m.role not in ROLES:
                raise ValueError(f"metric {m.name!r} plays an undeclared role {m.role!r}")
            index[m.name] = m
        self._index = index

    def __getitem__(self, name: str) -> Metric:
        return self._index[name]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self):
        return iter(self._index.values())

    def __len__(self) -> int:
        return len(self._index)

    def get(self, name: str) -> Metric | None:
        return self._index.get(name)

    def by_source(self, source: str) -> list[Metric]:
        return [m for m in self._index.values() if m.source == source]

    def by_role(self, role: str) -> list[Metric]:
        """Every metric (of any source) that plays ``role``."""
        return [m for m in self._index.values() if m.role == role]


def _build() -> Catalog:
    from agent.catalog import gpu, host, process, steps

    return Catalog([*host.METRICS, *process.METRICS, *gpu.METRICS, *steps.METRICS])


CATALOG = _build()
