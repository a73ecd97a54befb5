"""A Prometheus scrape endpoint rendering the latest snapshot in the text exposition format.

A scrape reads ``SnapshotHub.latest`` through the shared :class:`SeriesIndex` and never
touches a device. Names follow the OpenTelemetry → Prometheus compatibility rules (sanitized
name, unit suffix, ``_total`` for monotonic counters); dcgm-exporter names are kept verbatim.
Label sets are stable per series, so each series' rendered ``name{labels}`` is cached and a
scrape only formats values: rendering costs well under a millisecond per thousand series,
where the SDK's generic reader costs tens of milliseconds (see ``benchmarks/bench_export.py``).
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.metrics import Observation

from agent.errors import UsageError
from agent.snapshot import Snapshot
from exporters.naming import ExportPlan, InstrumentSpec

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Resource attributes copied onto every series so queries can filter by host and run.
LABELLED_RESOURCE_ATTRIBUTES = (
    "host.name",
    "accelwatch.run.id",
    "accelwatch.run.name",
    "accelwatch.rank",
)
_UNITS = {
    "By": "bytes",
    "s": "seconds",
    "ms": "milliseconds",
    "W": "watts",
    "J": "joules",
    "Cel": "celsius",
    "Hz": "hertz",
    "MHz": "megahertz",
    "%": "percent",
    "1": "",
}
_PER = {"s": "second", "m": "minute", "h": "hour"}
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]+")
_ANNOTATION = re.compile(r"\{[^}]*\}")
#: How often the idle endpoint's thread wakes (``serve_forever``'s select timeout; the
#: library's 0.5 s cost ~0.15 ms of CPU per second doing nothing). Closing wakes it at once.
POLL_INTERVAL_S = 60.0
#: Closing waits at most this long for the serving thread.
CLOSE_WAIT_S = 5.0


def unit_suffix(unit: str) -> str:
    """``By`` → ``bytes``, ``By/s`` → ``bytes_per_second``, ``{error}`` and ``1`` → nothing."""
    unit = _ANNOTATION.sub("", unit)
    top, sep, bottom = unit.partition("/")
    if sep and bottom:
        top = _UNITS.get(top, _INVALID_LABEL.sub("_", top))
        per = _PER.get(bottom, _INVALID_LABEL.sub("_", bottom))
        return f"{top}_per_{per}" if top else f"per_{per}"
    return _UNITS.get(unit, _INVALID_LABEL.sub("_", unit))


def metric_name(spec: InstrumentSpec) -> tuple[str, str]:
    """(family name, sample name) of an instrument: ``process_cpu_time_seconds(_total)``."""
    name = _INVALID_NAME.sub("_", spec.name)
    if name[:1].isdigit():
        name = f"_{name}"
    suffix = unit_suffix(spec.unit)
    if suffix and not name.endswith(f"_{suffix}"):
        name = f"{name}_{suffix}"
    if spec.kind == "counter":
        base = name.removesuffix("_total")
        return base, f"{base}_total"
    return name, name


def label_name(key: str) -> str:
    name = _INVALID_LABEL.sub("_", key)
    return f"_{name}" if name[:1].isdigit() else name


def label_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_labels(attributes: Mapping[str, Any], extra: str = "") -> str:
    parts = [f'{label_name(k)}="{label_value(v)}"' for k, v in sorted(attributes.items())]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def sample_value(value: float) -> str:
    if value - value == 0:  # finite (inf - inf and NaN - NaN are NaN)
        return repr(float(value))
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


class Exposition:
    """Renders ``{instrument: observations}`` to text, caching every series' name and labels."""

    def __init__(
        self, plan: ExportPlan, extra: Mapping[str, InstrumentSpec], resource: Mapping[str, Any]
    ) -> None:
        specs = {**plan.instruments, **extra}
        self._families = {name: metric_name(spec) for name, spec in specs.items()}
        self._headers = {
            name: self._header(spec, self._families[name][0]) for name, spec in specs.items()
        }
        self._resource_labels = ",".join(
            f'{label_name(k)}="{label_value(resource[k])}"'
            for k in LABELLED_RESOURCE_ATTRIBUTES
            if k in resource
        )
        self._target_info = (
            "# HELP target_info Target metadata\n# TYPE target_info gauge\n"
            f"target_info{render_labels(resource)} 1\n"
        )
        self._prefixes: dict[int, tuple[Mapping[str, Any], str]] = {}

    @staticmethod
    def _header(spec: InstrumentSpec, family: str) -> str:
        kind = "counter" if spec.kind == "counter" else "gauge"
        help_text = spec.description.replace("\\", "\\\\").replace("\n", "\\n")
        return f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n"

    def render(self, points: Mapping[str, list[Observation]]) -> str:
        out = [self._target_info]
        cache = self._prefixes
        fresh: dict[int, tuple[Mapping[str, Any], str]] = {}
        for instrument, observations in points.items():
            if not observations or instrument not in self._families:
                continue
            out.append(self._headers[instrument])
            sample = self._families[instrument][1]
            for observation in observations:
                attributes = observation.attributes or {}
                key = id(attributes)
                cached = cache.get(key)
                if cached is None or cached[0] is not attributes:
                    cached = (attributes, sample + render_labels(attributes, self._resource_labels))
                fresh[key] = cached
                out.append(f"{cached[1]} {sample_value(observation.value)}\n")
        self._prefixes = fresh  # only series seen in this scrape stay cached
        return "".join(out)


def parse_address(address: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``[::1]:9464`` for IPv6) → (host, port); the host defaults to 127.0.0.1."""
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = "", address
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"--prometheus {address}: expected [HOST:]PORT") from None
    if not 0 <= number <= 65535:
        raise UsageError(f"--prometheus {address}: port out of range")
    return host.strip("[]") or "127.0.0.1", number


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), handler)


class PrometheusEndpoint:
    """Serves ``/metrics`` from a thread; each scrape renders the latest snapshot.

    The listening socket is bound when the endpoint is built (before the job starts), so a taken
    port is a usage error and never a dead job; :meth:`serve` only starts answering. Until then
    a connection waits in the backlog.
    """

    def __init__(self, address: str) -> None:
        self.host, self.port = parse_address(address)
        self._health: dict[str, Any] = {}
        self._render: Callable[[], str] = lambda: ""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        handler = type("Handler", (_ScrapeHandler,), {"endpoint": self})
        try:
            self._server: _Server | None = _Server(self.host, self.port, handler)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise UsageError(f"--prometheus {self.host}:{self.port}: {reason.lower()}") from None
        self.port = int(self._server.server_address[1])

    def scrape(self) -> bytes:
        """One scrape's body (also what the HTTP handler sends)."""
        with self._lock:
            text = self._render()
            self._health["prometheus.scrapes"] = int(self._health.get("prometheus.scrapes", 0)) + 1
        return text.encode()

    def serve(
        self,
        health: dict[str, Any],
        points: Callable[[Snapshot | None], Mapping[str, list[Observation]]],
        latest: Callable[[], Snapshot | None],
        exposition: Exposition,
    ) -> tuple[str, int]:
        """Start answering scrapes from a thread; returns the bound (host, port)."""
        assert self._server is not None, "serve() after close()"
        with self._lock:
            self._health = health
            health.setdefault("prometheus.scrapes", 0)
            self._render = lambda: exposition.render(points(latest()))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(POLL_INTERVAL_S,),
            name="accelwatch-prometheus",
            daemon=True,
        )
        self._thread.start()
        return self.host, self.port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the socket (also when :meth:`serve` never ran)."""
        if self._server is not None:
            if self._thread is not None:
                self._stop_serving(self._server)
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _stop_serving(self, server: _Server) -> None:
        """``shutdown()`` waits for ``serve_forever`` to see its flag, which it checks only when
        its select returns: connect until it has (each connection wakes the select at once)."""
        stopper = threading.Thread(target=server.shutdown, name="accelwatch-prometheus-stop")
        stopper.start()
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        deadline = time.monotonic() + CLOSE_WAIT_S
        while stopper.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((host, self.port), 0.5):
                pass
            stopper.join(0.05)


class _ScrapeHandler(BaseHTTPRequestHandler):
    endpoint: PrometheusEndpoint

    def do_GET(self) -> None:  # noqa: N802 - http.server method name
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "try /metrics")
            return
        body = self.endpoint.scrape()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Iterable[Any]) -> None:
        pass  # scrapes are counted in the health counters, not logged
