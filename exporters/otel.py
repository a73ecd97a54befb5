"""The export consumer: OTLP through the SDK, a Prometheus endpoint, one series index.

OTLP uses a MeterProvider whose observable instruments come from the catalog and a
``PeriodicExportingMetricReader``; the Prometheus endpoint renders the same observations
itself. Both read the latest snapshot through :class:`exporters.series.SeriesIndex`.
Findings go out as a gauge and, over OTLP, as log records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource

from agent import __version__
from agent.snapshot import Snapshot
from exporters.findings import FINDINGS_GAUGE, FINDINGS_SPEC, FindingLogEmitter, FindingsGauge
from exporters.naming import PROCESS_ATTRIBUTE_KEYS, ExportPlan, build_plan
from exporters.otlp import (
    DEFAULT_EVENT_GAP_S,
    CountingLogExporter,
    CountingMetricExporter,
    ExportHealth,
    log_exporter,
    metric_exporter,
)
from exporters.prometheus import Exposition, PrometheusEndpoint
from exporters.resource import build_resource
from exporters.series import DEFAULT_MAX_PROCESSES, SeriesIndex

if TYPE_CHECKING:
    from agent.context import LiveContext

SCOPE = "accelwatch"


def quiet_sdk_logging() -> None:
    """Keep the SDK's per-attempt export errors off the terminal (the TUI owns it).

    Failures are counted in the context's health and noted as ``export_failed`` events instead.
    A NullHandler stops Python's last-resort stderr handler; records still propagate to
    any handler the user configured.
    """
    sdk_logger = logging.getLogger("opentelemetry")
    if not any(isinstance(h, logging.NullHandler) for h in sdk_logger.handlers):
        sdk_logger.addHandler(logging.NullHandler())


def sdk_disabled(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def instrument_views(plan: ExportPlan) -> list[View]:
    """Views that keep names exactly as planned and bound per-process attributes.

    The SDK lowercases instrument names; a view's ``name`` restores ``DCGM_FI_DEV_GPU_UTIL``.
    Per-process instruments keep only identifying attributes (a cardinality guard).
    """
    views = []
    for spec in plan.instruments.values():
        metrics = [plan.catalog[name] for name in spec.metrics]
        keys: set[str] | None = None
        if all(m.source == "process" for m in metrics):
            keys = set(PROCESS_ATTRIBUTE_KEYS)
            for m in metrics:
                keys.update(m.otel_attributes)
        renamed = spec.name if spec.name != spec.name.lower() else None
        if keys is not None or renamed is not None:
            views.append(View(instrument_name=spec.name, name=renamed, attribute_keys=keys))
    return views


def register_instruments(
    meter: Meter, plan: ExportPlan, index: SeriesIndex, latest: Callable[[], Snapshot | None]
) -> None:
    """One observable instrument per planned name: counters for counters, gauges otherwise."""
    for spec in plan.instruments.values():

        def callback(_options: CallbackOptions, name: str = spec.name) -> Iterable[Observation]:
            return index.observations(latest(), name)

        create = (
            meter.create_observable_counter
            if spec.kind == "counter"
            else meter.create_observable_gauge
        )
        create(spec.name, callbacks=[callback], unit=spec.unit, description=spec.description)


class TelemetryExporter:
    """A session consumer exporting over OTLP and/or a Prometheus endpoint.

    ``otlp``: None (off), "" (endpoint and protocol from ``OTEL_*``) or an endpoint.
    ``prometheus``: None (off) or "host:port". Both read one :class:`SeriesIndex`.
    """

    def __init__(
        self,
        *,
        otlp: str | None = None,
        prometheus: str | None = None,
        metric_names: str = "otel",
        max_processes: int = DEFAULT_MAX_PROCESSES,
        event_gap_s: float = DEFAULT_EVENT_GAP_S,
    ) -> None:
        self.otlp = otlp
        self.prometheus_address = prometheus
        self.metric_names = metric_names
        self.max_processes = max_processes
        self.event_gap_s = event_gap_s
        self.index: SeriesIndex | None = None
        self.prometheus: PrometheusEndpoint | None = None
        self.meter_provider: MeterProvider | None = None
        self.logger_provider: LoggerProvider | None = None
        self.log_emitter: FindingLogEmitter | None = None
        self._context: LiveContext | None = None

    def start(self, context: LiveContext) -> None:
        self._context = context
        self.health = context.counters("export")
        if sdk_disabled():
            context.note("export_disabled", "otel", reason=f"{OTEL_SDK_DISABLED}=true")
            return
        quiet_sdk_logging()
        resource = build_resource(context.run)
        plan = build_plan(("otel", self.metric_names))
        self.index = SeriesIndex(plan, context.run.host, self.max_processes, self.health)
        findings = FindingsGauge(lambda: context.findings)
        if self.otlp is not None:
            self._start_otlp(context, resource, plan, findings)
        if self.prometheus_address is not None:
            self._start_prometheus(context, resource, plan, findings)

    def _start_otlp(
        self, context: LiveContext, resource: Resource, plan: ExportPlan, findings: FindingsGauge
    ) -> None:
        assert self.index is not None
        health = ExportHealth(
            self.health,
            context.note,
            self.otlp or "OTEL_EXPORTER_OTLP_*",
            self.event_gap_s,
        )
        endpoint = self.otlp or None
        reader = PeriodicExportingMetricReader(
            CountingMetricExporter(metric_exporter(endpoint), health)
        )
        self.meter_provider = MeterProvider(
            metric_readers=[reader],
            resource=resource,
            views=instrument_views(plan),
            exemplar_filter=AlwaysOffExemplarFilter(),
            shutdown_on_exit=False,
        )
        meter = self.meter_provider.get_meter(SCOPE, __version__)
        register_instruments(meter, plan, self.index, lambda: context.hub.latest)
        meter.create_observable_gauge(
            FINDINGS_GAUGE,
            callbacks=[lambda _options: findings.observe()],
            unit=FINDINGS_SPEC.unit,
            description=FINDINGS_SPEC.description,
        )
        self.logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self.logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(CountingLogExporter(log_exporter(endpoint), health))
        )
        logger = self.logger_provider.get_logger(SCOPE, __version__)
        self.log_emitter = FindingLogEmitter(logger, lambda: context.findings)
        context.hub.subscribe(self.log_emitter)
        context.note(
            "export_started",
            "otlp",
            endpoint=self.otlp or "OTEL_EXPORTER_OTLP_*",
            metric_names=self.metric_names,
        )

    def _start_prometheus(
        self, context: LiveContext, resource: Resource, plan: ExportPlan, findings: FindingsGauge
    ) -> None:
        index = self.index
        assert index is not None and self.prometheus_address is not None

        def points(snapshot: Snapshot | None) -> Mapping[str, list[Observation]]:
            return {**index.points(snapshot), FINDINGS_GAUGE: findings.observe()}

        exposition = Exposition(plan, {FINDINGS_GAUGE: FINDINGS_SPEC}, resource.attributes)
        self.prometheus = PrometheusEndpoint(
            self.prometheus_address, self.health, points, lambda: context.hub.latest, exposition
        )
        try:
            self.prometheus.serve()
        except Exception:
            self.stop()
            raise
        self.health["prometheus.address"] = self.prometheus.address
        context.note(
            "export_started",
            "prometheus",
            url=f"http://{self.prometheus.address}/metrics",
            metric_names=self.metric_names,
        )

    def stop(self) -> None:
        """Final export (bounded by the exporter's timeout), then close the endpoint."""
        context = self._context
        if context is not None and self.log_emitter is not None:
            context.hub.unsubscribe(self.log_emitter)
            if context.hub.latest is not None:
                self.log_emitter(context.hub.latest)  # findings set by the final analysis
        if self.prometheus is not None:
            self.prometheus.close()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
            self.meter_provider = None
        if self.logger_provider is not None:
            self.logger_provider.shutdown()
            self.logger_provider = None
