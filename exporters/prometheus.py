"""A Prometheus scrape endpoint: the SDK's ``PrometheusMetricReader`` on a private registry.

A scrape runs the observable callbacks on the HTTP server's thread; they read the latest
snapshot only. The registry is private so that two sessions in one process (tests, importers)
never collide, and only this endpoint's metrics are served (no Python process collectors).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, start_http_server

from agent.errors import UsageError

#: Resource attributes copied onto every series so queries can filter by host and run.
LABELLED_RESOURCE_ATTRIBUTES = frozenset(
    {"host.name", "accelwatch.run.id", "accelwatch.run.name", "accelwatch.rank"}
)


class _ScrapeCounter:
    """A registry member that only counts scrapes into ``session.health``."""

    def __init__(self, health: dict[str, Any]) -> None:
        self._health = health
        self._lock = threading.Lock()
        health.setdefault("prometheus.scrapes", 0)

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        with self._lock:
            self._health["prometheus.scrapes"] = int(self._health["prometheus.scrapes"]) + 1
        return ()


class PrometheusEndpoint:
    """Owns the reader, its registry and the HTTP server serving ``/metrics``."""

    def __init__(self, address: str, health: dict[str, Any]) -> None:
        host, _, port = address.rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ScrapeCounter(health))
        self.reader = PrometheusMetricReader(
            scope_info_enabled=False,
            resource_attribute_filter=LABELLED_RESOURCE_ATTRIBUTES.__contains__,
            registry=self.registry,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def serve(self) -> tuple[str, int]:
        """Start serving; returns the bound (host, port) (port 0 picks a free one)."""
        try:
            self._server, self._thread = start_http_server(
                self.port, addr=self.host, registry=self.registry
            )
        except OSError as exc:
            raise UsageError(
                f"cannot serve Prometheus metrics on {self.host}:{self.port}: "
                f"{exc.strerror or exc}"
            ) from None
        self.port = int(self._server.server_address[1])
        return self.host, self.port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

