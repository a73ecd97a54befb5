"""The export consumer: OTLP, a Prometheus endpoint, one series index.

OTLP metrics are encoded straight from the latest snapshot every interval
(:mod:`exporters.otlp_request`, sent by :mod:`exporters.otlp_metrics` on the SDK exporter's
connection); the Prometheus endpoint renders the same observations itself. Both read the latest
snapshot through :class:`exporters.series.SeriesIndex`. Findings go out as a gauge and, over
OTLP, as log records (the SDK's logs pipeline).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExporter
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.resources import Resource

from agent import __version__
from agent.errors import UsageError
from agent.snapshot import Snapshot
from exporters.findings import FINDINGS_GAUGE, FINDINGS_SPEC, FindingLogEmitter, FindingsGauge
from exporters.naming import ExportPlan, build_plan
from exporters.otlp import (
    DEFAULT_EVENT_GAP_S,
    FAILING_SHUTDOWN_BUDGET_S,
    SHUTDOWN_BUDGET_S,
    OtlpSettings,
    log_exporter,
    otlp_settings,
)
from exporters.otlp_health import CountingLogExporter, CountingMetricExporter, ExportHealth
from exporters.otlp_logs import LazyBatchLogRecordProcessor
from exporters.otlp_metrics import MetricsTicker, counter_temporality, metric_exporter
from exporters.otlp_request import RequestBuilder
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
        self.ticker: MetricsTicker | None = None
        self.logger_provider: LoggerProvider | None = None
        self.log_emitter: FindingLogEmitter | None = None
        self.settings: OtlpSettings | None = None
        self._sdk_exporters: tuple[Any, LogRecordExporter] | None = None
        self._counting: list[CountingMetricExporter | CountingLogExporter] = []
        self._context: LiveContext | None = None
        self._first_export: Callable[[Snapshot], None] | None = None
        self._export_health: ExportHealth | None = None
        self._stopped = False
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
    def _build_sdk_exporters(settings: OtlpSettings) -> tuple[Any, LogRecordExporter]:
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
        index = self.index

        def observe() -> Mapping[str, list[Observation]]:
            return {**index.points(context.hub.latest), FINDINGS_GAUGE: findings.observe()}

        builder = RequestBuilder(
            plan,
            resource.attributes,
            (SCOPE, __version__),
            observe,
            extra={FINDINGS_GAUGE: FINDINGS_SPEC},
            temporality=counter_temporality(metrics),
            schema_url=resource.schema_url,
        )
        self.ticker = MetricsTicker(
            lambda: builder.build_encoded() if context.hub.latest is not None else (None, 0),
            counting_metrics,
            health,
            settings.interval_ms / 1000.0,
        )
        self.ticker.start()
        self.logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self.logger_provider.add_log_record_processor(LazyBatchLogRecordProcessor(counting_logs))
        logger = self.logger_provider.get_logger(SCOPE, __version__)
        self.log_emitter = FindingLogEmitter(logger, lambda: context.findings)
        context.hub.subscribe(self.log_emitter)
        self._subscribe_first_export(context)
        context.note("export_started", "otlp", endpoint=shown, metric_names=self.metric_names)

    def _subscribe_first_export(self, context: LiveContext) -> None:
        """At the first tick: check that something listens at the endpoint (a missing collector
        shows at once), then export, rather than waiting for the first full interval."""
        started = threading.Event()
        ticker = self.ticker
        assert ticker is not None
        health = self._export_health

        def first_export(_snapshot: Snapshot) -> None:
            if started.is_set():
                return
            started.set()
            context.hub.unsubscribe(first_export)

            def probe_then_export() -> None:
                if health is not None:
                    _quietly(health.probe)
                _quietly(ticker.export_now)

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
        A second call does nothing (the SDK would warn about exporters already shut down).
        """
        if self._stopped:
            return
        self._stopped = True
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
        workers: list[Callable[[], object]] = []
        ticker, logger_provider = self.ticker, self.logger_provider
        self.ticker = self.logger_provider = None
        if ticker is not None:  # the final export, then the connection closes
            counting = self._counting[0]

            def final_export() -> None:
                ticker.shutdown()
                counting.abort()

            workers.append(final_export)
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
