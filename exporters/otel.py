"""The export consumer: OTLP through the SDK, a Prometheus endpoint, one series index.

OTLP uses a MeterProvider whose observable instruments come from the catalog and a
``PeriodicExportingMetricReader``; the Prometheus endpoint renders the same observations
itself. Both read the latest snapshot through :class:`exporters.series.SeriesIndex`.
Findings go out as a gauge and, over OTLP, as log records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource

from agent import __version__
from agent.errors import UsageError
from agent.registry import default_registry
from agent.snapshot import Snapshot
from exporters.findings import FINDINGS_GAUGE, FINDINGS_SPEC, FindingLogEmitter, FindingsGauge
from exporters.naming import PROCESS_ATTRIBUTE_KEYS, ExportPlan, build_plan
from exporters.otlp import (
    DEFAULT_EVENT_GAP_S,
    FAILING_SHUTDOWN_BUDGET_S,
    SHUTDOWN_BUDGET_S,
    CountingLogExporter,
    CountingMetricExporter,
    ExportHealth,
    OtlpSettings,
    log_exporter,
    metric_exporter,
    otlp_settings,
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
        if all(_per_process(m.source) for m in metrics):
            keys = set(PROCESS_ATTRIBUTE_KEYS)
            for m in metrics:
                keys.update(m.otel_attributes)
        renamed = spec.name if spec.name != spec.name.lower() else None
        if keys is not None or renamed is not None:
            views.append(View(instrument_name=spec.name, name=renamed, attribute_keys=keys))
    return views


def _per_process(source: str) -> bool:
    """Whether every entity ``source`` declares is a process (its series are per process)."""
    spec = default_registry().get(source)
    return (
        spec is not None
        and bool(spec.entity_kinds)
        and all(kind.kind == "process" for kind in spec.entity_kinds)
    )


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


class BackoffReader(PeriodicExportingMetricReader):
    """The SDK's periodic reader, skipping whole collections while exports back off.

    A skipped interval runs no callback, builds no point and encodes nothing; it is counted
    (with the points the last attempt held) in the export health. A due attempt while the
    endpoint is known down starts with a TCP connect: still down, it fails there."""

    def __init__(
        self, exporter: CountingMetricExporter, health: ExportHealth, interval_ms: float
    ) -> None:
        super().__init__(exporter, export_interval_millis=interval_ms)
        self._counting = exporter
        self._backoff = health

    def collect(self, timeout_millis: float = 10_000) -> None:
        if not self._backoff.due():
            self._backoff.skipped(self._counting.last_points)
            return
        last = self._counting.last_points  # 0: no batch built yet, so build one to know its size
        if last and self._backoff.unreachable(last):
            return  # still down: a TCP connect told, nothing was built
        super().collect(timeout_millis=timeout_millis)


class TelemetryExporter:
    """A session consumer exporting over OTLP and/or a Prometheus endpoint.

    ``otlp``: None (off), "" (endpoint and protocol from ``OTEL_*``) or an endpoint.
    ``prometheus``: None (off) or "host:port". Both read one :class:`SeriesIndex`.

    Building it validates every option and binds the Prometheus socket (a
    :class:`~agent.errors.UsageError` before the job starts); :meth:`start` only starts
    serving and exporting; :meth:`stop` releases everything, started or not, within
    :data:`~exporters.otlp.SHUTDOWN_BUDGET_S`.
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
        self.settings: OtlpSettings | None = None
        self._sdk_exporters: tuple[MetricExporter, LogRecordExporter] | None = None
        self._counting: list[CountingMetricExporter | CountingLogExporter] = []
        self._context: LiveContext | None = None
        self._first_export: Callable[[Snapshot], None] | None = None
        self._export_health: ExportHealth | None = None
        self.disabled = sdk_disabled()
        if self.disabled:
            return
        if otlp is not None:
            self.settings = otlp_settings(otlp or None)
            self._sdk_exporters = self._build_sdk_exporters(self.settings)
        if prometheus is not None:
            try:
                self.prometheus = PrometheusEndpoint(prometheus)
            except Exception:
                self.stop()
                raise

    @staticmethod
    def _build_sdk_exporters(settings: OtlpSettings) -> tuple[MetricExporter, LogRecordExporter]:
        """The SDK's exporters, built now so that their own ``OTEL_*`` checks fail before start."""
        quiet_sdk_logging()
        endpoint, timeout = settings.endpoint, settings.attempt_timeout_s
        try:
            return (
                metric_exporter(endpoint, timeout_s=timeout),
                log_exporter(endpoint, timeout_s=timeout),
            )
        except UsageError:
            raise
        except Exception as exc:  # the SDK's own configuration errors (compression, headers...)
            raise UsageError(f"--otlp {settings.shown}: {exc}") from None

    def start(self, context: LiveContext) -> None:
        self._context = context
        self.health = context.counters("export")
        if self.disabled:
            context.note("export_disabled", "otel", reason=f"{OTEL_SDK_DISABLED}=true")
            return
        quiet_sdk_logging()
        resource = build_resource(context.run)
        plan = build_plan(("otel", self.metric_names))
        self.index = SeriesIndex(plan, context.run.host, self.max_processes, self.health)
        findings = FindingsGauge(lambda: context.findings)
        if self._sdk_exporters is not None:
            self._start_otlp(context, resource, plan, findings)
        if self.prometheus is not None:
            self._start_prometheus(context, resource, plan, findings)

    def _start_otlp(
        self, context: LiveContext, resource: Resource, plan: ExportPlan, findings: FindingsGauge
    ) -> None:
        assert self.index is not None and self.settings is not None
        assert self._sdk_exporters is not None
        settings = self.settings
        shown = self.otlp or settings.shown
        health = ExportHealth(
            self.health,
            context.note,
            shown,
            self.event_gap_s,
            settings.address,
            interval_s=settings.interval_ms / 1000.0,
        )
        self._export_health = health
        metrics, logs = self._sdk_exporters
        counting_metrics = CountingMetricExporter(metrics, health)
        counting_logs = CountingLogExporter(logs, health)
        self._counting = [counting_metrics, counting_logs]
        reader = BackoffReader(counting_metrics, health, settings.interval_ms)
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
        self.logger_provider.add_log_record_processor(BatchLogRecordProcessor(counting_logs))
        logger = self.logger_provider.get_logger(SCOPE, __version__)
        self.log_emitter = FindingLogEmitter(logger, lambda: context.findings)
        context.hub.subscribe(self.log_emitter)
        self._subscribe_first_export(context)
        context.note("export_started", "otlp", endpoint=shown, metric_names=self.metric_names)

    def _subscribe_first_export(self, context: LiveContext) -> None:
        """At the first tick: check that something listens at the endpoint (a missing collector
        shows at once), then export, rather than waiting for the first full interval."""
        started = threading.Event()
        provider = self.meter_provider
        assert provider is not None and self.settings is not None
        timeout_ms = self.settings.attempt_timeout_s * 1000
        health = self._export_health

        def first_export(_snapshot: Snapshot) -> None:
            if started.is_set():
                return
            started.set()
            context.hub.unsubscribe(first_export)

            def probe_then_export() -> None:
                if health is not None:
                    _quietly(health.probe)
                _quietly(lambda: provider.force_flush(timeout_millis=timeout_ms))

            threading.Thread(
                target=probe_then_export,
                name="accelwatch-otlp-first-export",
                daemon=True,
            ).start()

        self._first_export = first_export
        context.hub.subscribe(first_export)

    def _start_prometheus(
        self, context: LiveContext, resource: Resource, plan: ExportPlan, findings: FindingsGauge
    ) -> None:
        index = self.index
        assert index is not None and self.prometheus is not None

        def points(snapshot: Snapshot | None) -> Mapping[str, list[Observation]]:
            return {**index.points(snapshot), FINDINGS_GAUGE: findings.observe()}

        exposition = Exposition(plan, {FINDINGS_GAUGE: FINDINGS_SPEC}, resource.attributes)
        self.prometheus.serve(self.health, points, lambda: context.hub.latest, exposition)
        self.health["prometheus.address"] = self.prometheus.address
        context.note(
            "export_started",
            "prometheus",
            url=f"http://{self.prometheus.address}/metrics",
            metric_names=self.metric_names,
        )

    def stop(self) -> None:
        """Final export, then close everything; returns within ``SHUTDOWN_BUDGET_S`` (within
        ``FAILING_SHUTDOWN_BUDGET_S`` while exports are failing anyway).

        The SDK's shutdowns run on helper threads; whatever has not finished by the deadline
        is aborted (connections closed, retries dropped) and counted as a failed export.
        """
        context = self._context
        if context is not None and self._first_export is not None:
            context.hub.unsubscribe(self._first_export)
        if context is not None and self.log_emitter is not None:
            context.hub.unsubscribe(self.log_emitter)
            if context.hub.latest is not None:
                self.log_emitter(context.hub.latest)  # findings set by the final analysis
        if self.prometheus is not None:
            self.prometheus.close()
            self.prometheus = None
        budget_s = SHUTDOWN_BUDGET_S
        if self._export_health is not None and self._export_health.failing:
            budget_s = FAILING_SHUTDOWN_BUDGET_S  # the collector is down: one try, no waiting
            self._export_health.retry_now()  # ... but that one try, whatever the backoff
        deadline = time.monotonic() + budget_s
        budget_ms = budget_s * 1000 * 0.8
        workers = []
        meter_provider, logger_provider = self.meter_provider, self.logger_provider
        self.meter_provider = self.logger_provider = None
        if meter_provider is not None:
            workers.append(lambda: meter_provider.shutdown(timeout_millis=budget_ms))
        if logger_provider is not None:
            workers.append(logger_provider.shutdown)
        threads = [
            threading.Thread(
                target=_quietly, args=(work,), name="accelwatch-otlp-stop", daemon=True
            )
            for work in workers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads) or not threads:
            for exporter in self._counting:
                exporter.abort()
        if self._sdk_exporters is not None and not self._counting:
            for inner in self._sdk_exporters:  # built, never started
                _quietly(inner.shutdown)
        self._sdk_exporters = None


def _quietly(work: Callable[[], object]) -> None:
    """Run an SDK call whose failure is already counted (or irrelevant at shutdown)."""
    with contextlib.suppress(Exception):
        work()
