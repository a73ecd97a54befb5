"""The source registry: every source declares itself once, and everything else asks the registry.

Sources are found through the ``accelwatch.sources`` entry-point group (each entry point names a
:class:`~agent.source.SourceSpec`), as Harlequin finds its adapters; like the OpenTelemetry
Collector's factory map, the registry refuses a second source of the same name and a metric name
that is already declared. Discovery runs once, on the first read, never at import; a plug-in
that fails to load becomes a notice, not a crash. Registering a source adds its metrics to the
process-wide :data:`agent.catalog.CATALOG`.

Analysis, TUI, report and exporters ask the registry which entities are of a kind
(``accelerator``, ``port``...) instead of testing a driver's name.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata

from agent.catalog import CATALOG, Catalog
from agent.catalog.roles import ENTITY_KINDS
from agent.source import SourceSpec

ENTRY_POINT_GROUP = "accelwatch.sources"

#: Bound on the entity → kind memo (process entities come and go; the memo must not grow forever).
_KIND_CACHE_MAX = 16384


class SourceRegistrationError(ValueError):
    """A source cannot be registered: a duplicate name or metric, an unknown kind, a bad pattern."""


@dataclass(frozen=True)
class SourceNotice:
    """A plug-in that could not be registered: which entry point, and why (one line)."""

    source: str
    reason: str


@dataclass(frozen=True)
class _Kind:
    kind: str
    source: str
    pattern: str
    regex: re.Pattern[str]


class SourceRegistry:
    """Name → :class:`SourceSpec`, with the entity-kind lookups built from the specs.

    ``catalog`` (default: the process-wide one) grows with every registered source's metrics.
    ``discover=True`` loads the entry points of ``group`` lazily, once, on the first read.
    """

    def __init__(
        self,
        catalog: Catalog | None = None,
        *,
        discover: bool = False,
        group: str = ENTRY_POINT_GROUP,
    ) -> None:
        self._catalog = CATALOG if catalog is None else catalog
        self._group = group
        self._pending_discovery = discover
        self._discovering = False
        self._lock = threading.RLock()
        self._specs: dict[str, SourceSpec] = {}
        self._order: list[str] = []
        self._kinds: list[_Kind] = []
        self._kind_cache: dict[tuple[str, str], str | None] = {}
        self._notices: list[SourceNotice] = []
        #: Metric names each source added to the catalog (not those the core already declared).
        self._added: dict[str, tuple[str, ...]] = {}

    # -- registering
    def register(self, spec: SourceSpec) -> None:
        """Add ``spec``, all or nothing; raise :class:`SourceRegistrationError` if it clashes."""
        with self._lock:
            kinds = self._check(spec)
            added = tuple(m.name for m in spec.metrics if m.name not in self._catalog._index)
            try:
                self._catalog.extend(spec.metrics)
            except ValueError as exc:
                raise SourceRegistrationError(f"source {spec.name!r}: {exc}") from None
            self._specs[spec.name] = spec
            self._added[spec.name] = added
            self._order.append(spec.name)
            self._kinds.extend(kinds)
            self._kind_cache.clear()

    def unregister(self, name: str) -> None:
        """Remove a source and the metrics it added: for tests that register a fake source."""
        with self._lock:
            spec = self._specs.pop(name, None)
            if spec is None:
                return
            self._order.remove(name)
            self._kinds = [k for k in self._kinds if k.source != name]
            self._kind_cache.clear()
            self._catalog._discard(self._added.pop(name, ()))

    def _check(self, spec: SourceSpec) -> list[_Kind]:
        if not isinstance(spec, SourceSpec):
            raise SourceRegistrationError(f"{spec!r} is not a SourceSpec")
        if not spec.name or not re.fullmatch(r"[a-z][a-z0-9_]*", spec.name):
            raise SourceRegistrationError(f"source name {spec.name!r}: use [a-z][a-z0-9_]*")
        if spec.name in self._specs:
            raise SourceRegistrationError(f"source {spec.name!r} is already registered")
        owners = {m.name: s.name for s in self._specs.values() for m in s.metrics}
        for m in spec.metrics:
            if m.source != spec.name:
                raise SourceRegistrationError(
                    f"source {spec.name!r}: metric {m.name!r} declares source {m.source!r}"
                )
            if m.name in owners:
                raise SourceRegistrationError(
                    f"source {spec.name!r}: metric {m.name!r} is already declared by "
                    f"source {owners[m.name]!r}"
                )
        try:
            self._catalog.check(spec.metrics)
        except ValueError as exc:
            raise SourceRegistrationError(f"source {spec.name!r}: {exc}") from None
        kinds: list[_Kind] = []
        for ek in spec.entity_kinds:
            if ek.kind not in ENTITY_KINDS:
                raise SourceRegistrationError(
                    f"source {spec.name!r}: entity kind {ek.kind!r} is not one of "
                    f"{', '.join(ENTITY_KINDS)} (agent/catalog/roles.py)"
                )
            try:
                regex = re.compile(ek.pattern)
            except re.error as exc:
                raise SourceRegistrationError(
                    f"source {spec.name!r}: kind {ek.kind!r} pattern {ek.pattern!r}: {exc}"
                ) from None
            kinds.append(_Kind(ek.kind, spec.name, ek.pattern, regex))
        return kinds

    # -- discovery
    def load(self) -> None:
        """Register every entry point of the group, once; a broken one becomes a notice."""
        if not self._pending_discovery:
            return
        with self._lock:
            if not self._pending_discovery or self._discovering:
                return
            self._discovering = True
            try:
                for ep in sorted(_entry_points(self._group), key=lambda e: e.name):
                    self._load_one(ep)
            finally:
                self._pending_discovery = False
                self._discovering = False

    def _load_one(self, ep: metadata.EntryPoint) -> None:
        try:
            spec = ep.load()
        except Exception as exc:  # a broken plug-in must not break accelwatch
            self._notices.append(
                SourceNotice(ep.name, f"cannot load {ep.value}: {type(exc).__name__}: {exc}")
            )
            return
        try:
            self.register(spec)
        except SourceRegistrationError as exc:
            self._notices.append(SourceNotice(ep.name, f"{ep.value}: {exc}"))

    def notices(self) -> list[SourceNotice]:
        """Plug-ins that were found but could not be registered."""
        self.load()
        return list(self._notices)

    # -- reading
    def specs(self) -> list[SourceSpec]:
        """Every registered source, in start order (then registration order)."""
        self.load()
        with self._lock:
            specs = [self._specs[name] for name in self._order]
        return sorted(specs, key=lambda s: s.start_order)

    def get(self, name: str) -> SourceSpec | None:
        self.load()
        return self._specs.get(name)

    def kind_of(self, source: str, entity: str) -> str | None:
        """The kind of ``entity`` of ``source``: its first kind whose pattern matches it whole."""
        key = (source, entity)
        try:
            return self._kind_cache[key]
        except KeyError:
            pass
        self.load()
        found = next(
            (k.kind for k in self._kinds if k.source == source and k.regex.fullmatch(entity)),
            None,
        )
        if len(self._kind_cache) >= _KIND_CACHE_MAX:
            self._kind_cache.clear()
        self._kind_cache[key] = found
        return found

    def entities_of_kind(self, kind: str) -> list[tuple[str, str]]:
        """``[(source, pattern)]`` of every source's entities of ``kind``."""
        self.load()
        return [(k.source, k.pattern) for k in self._kinds if k.kind == kind]

    def kind_predicate(
        self, kind: str, source_col: str = "source", entity_col: str = "entity"
    ) -> str:
        """A SQL (DuckDB) boolean over ``source_col``/``entity_col``: the row is of ``kind``.

        ``FALSE`` when no source declares the kind, so a query stays valid (and empty).
        """
        terms = [
            f"({source_col} = {_sql_text(source)} AND "
            f"regexp_full_match({entity_col}, {_sql_text(pattern)}))"
            for source, pattern in self.entities_of_kind(kind)
        ]
        return " OR ".join(terms) if terms else "FALSE"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _entry_points(group: str) -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=group)


_DEFAULT: SourceRegistry | None = None
_DEFAULT_LOCK = threading.Lock()


def default_registry() -> SourceRegistry:
    """The process-wide registry: entry-point discovery, feeding :data:`agent.catalog.CATALOG`."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = SourceRegistry(CATALOG, discover=True)
    return _DEFAULT
