"""The one metric catalog: every metric is declared here once and read by store, TUI and exporters.

A sample is ``(ts, source, entity, metric, value)``. The metric name says *what* is measured
(never its unit); ``unit`` uses UCUM codes as OpenTelemetry does (``1`` for ratios 0..1,
``By``, ``By/s``, ``s``, ``W``, ``J``, ``Cel``, ``MHz``). ``counter`` metrics are cumulative
and only grow (until a reset); ``gauge`` metrics are instantaneous or averaged over the interval.

Entities name the thing measured, per source:
  host: ``host``, ``cpu3``, ``net:eth0``
  disk: ``disk:nvme0n1``
  fabric: ``ib:mlx5_0/1``
  process: the pid as text, e.g. ``4242``
  nvml: ``gpu0``, ``gpu0/mig1``, ``gpu0/nvlink3``, ``gpu0/pid4242``
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    """A name → :class:`Metric` index with lookups by source and role.

    Declarations are never changed or removed once made; the catalog only grows, when a source
    registers (:mod:`agent.registry`). ``complete`` is called once, lazily, before the first
    read that needs every metric (iteration, ``by_source``, ``by_role``, a name not yet known):
    the process-wide catalog uses it to load the registered sources, so importing the catalog
    costs no plug-in discovery.
    """

    def __init__(
        self, metrics: Iterable[Metric], *, complete: Callable[[], None] | None = None
    ) -> None:
        self._index: dict[str, Metric] = {}
        self._complete = complete
        self._completing = False
        self._lock = threading.RLock()
        self.extend(metrics)

    def check(self, metrics: Iterable[Metric]) -> None:
        """Raise ValueError if ``metrics`` cannot be added: a name declared twice, a bad role.

        Adding the very declaration the catalog already holds is not a duplicate (a built-in
        source's spec re-lists the core's declarations).
        """
        seen: set[str] = set()
        for m in metrics:
            known = self._index.get(m.name)
            if m.name in seen or (known is not None and known is not m):
                raise ValueError(f"metric {m.name!r} declared twice")
            if m.role is not None and m.role not in ROLES:
                raise ValueError(f"metric {m.name!r} plays an undeclared role {m.role!r}")
            seen.add(m.name)

    def extend(self, metrics: Iterable[Metric]) -> None:
        """Add declarations, all or none (see :meth:`check`)."""
        metrics = list(metrics)
        self.check(metrics)
        for m in metrics:
            self._index.setdefault(m.name, m)

    def _discard(self, names: Iterable[str]) -> None:
        """Forget declarations: only for a registry undoing a test's registration."""
        for name in names:
            self._index.pop(name, None)

    def _all(self) -> dict[str, Metric]:
        if self._complete is None:
            return self._index
        with self._lock:  # other threads wait; a plug-in reading it while it loads sees builtins
            complete = self._complete
            if complete is not None and not self._completing:
                self._completing = True
                try:
                    complete()
                finally:
                    self._complete = None
                    self._completing = False
        return self._index

    def __getitem__(self, name: str) -> Metric:
        found = self._index.get(name)
        return found if found is not None else self._all()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._index or name in self._all()

    def __iter__(self) -> Iterator[Metric]:
        return iter(list(self._all().values()))

    def __len__(self) -> int:
        return len(self._all())

    def get(self, name: str) -> Metric | None:
        found = self._index.get(name)
        return found if found is not None else self._all().get(name)

    def by_source(self, source: str) -> list[Metric]:
        return [m for m in self._all().values() if m.source == source]

    def by_role(self, role: str) -> list[Metric]:
        """Every metric (of any source) that plays ``role``."""
        return [m for m in self._all().values() if m.role == role]


def _load_registered_sources() -> None:
    from agent.registry import default_registry

    default_registry().load()


def _build() -> Catalog:
    from agent.catalog import disk, fabric, gpu, host, process, steps

    return Catalog(
        [
            *host.METRICS,
            *disk.METRICS,
            *fabric.METRICS,
            *process.METRICS,
            *gpu.METRICS,
            *steps.METRICS,
        ],
        complete=_load_registered_sources,
    )


CATALOG = _build()
