"""Exporters that feed existing monitoring from the agent's latest snapshot.

``build_exporters(config)`` is the session's hook for ``--otlp``, ``--prometheus`` and
``--metric-names``; OpenTelemetry is imported only when one of them is used. The session calls
it before launching the job: it validates every option (and the ``OTEL_*`` values it reads) and
binds the Prometheus socket, raising a one-line :class:`UsageError`, so a bad option never
costs a started job. ``consumer.start(context)`` then only starts serving and exporting, and
``stop()`` releases what was built even if ``start`` never ran.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.context import Consumer


class ExportOptions(Protocol):
    """The recording options exporters read (the session's config satisfies it)."""

    otlp: str | None
    prometheus: str | None
    metric_names: str


#: Overrides the cap on processes with their own series (default 64).
MAX_PROCESSES_ENV = "ACCELWATCH_EXPORT_MAX_PROCESSES"


def build_exporters(config: ExportOptions) -> list[Consumer]:
    """The export consumers the config asks for (empty when neither OTLP nor Prometheus is on),
    validated and bound; a :class:`UsageError` names the option at fault."""
    if config.otlp is None and config.prometheus is None:
        return []
    if config.metric_names not in ("otel", "dcgm"):
        raise UsageError(f"--metric-names must be otel or dcgm, got {config.metric_names!r}")
    from exporters.otel import TelemetryExporter
    from exporters.series import DEFAULT_MAX_PROCESSES

    raw = os.environ.get(MAX_PROCESSES_ENV, "")
    try:
        max_processes = int(raw) if raw else DEFAULT_MAX_PROCESSES
    except ValueError:
        raise UsageError(f"{MAX_PROCESSES_ENV} must be a whole number, got {raw!r}") from None
    return [
        TelemetryExporter(
            otlp=config.otlp,
            prometheus=config.prometheus,
            metric_names=config.metric_names,
            max_processes=max(0, max_processes),
        )
    ]


__all__ = ["build_exporters"]
