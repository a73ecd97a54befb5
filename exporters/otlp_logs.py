"""The SDK's batch processor for findings' log records, started at the first record.

``BatchLogRecordProcessor`` runs a thread that wakes every ``OTEL_BLRP_SCHEDULE_DELAY``
(1 s by default) whether or not anything was logged: ~0.1 ms of CPU per second for an agent
that, in a healthy run, never emits a record. :class:`LazyBatchLogRecordProcessor` builds the
SDK's processor (with every ``OTEL_BLRP_*`` setting it reads) only when the first finding is
logged, so a run without findings has no such thread; from then on it is the SDK's.
"""

from __future__ import annotations

import threading

from opentelemetry.sdk._logs import LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter


class LazyBatchLogRecordProcessor(LogRecordProcessor):
    """A ``BatchLogRecordProcessor`` over ``exporter``, built at the first ``on_emit``."""

    def __init__(self, exporter: LogRecordExporter) -> None:
        self._exporter = exporter
        self._lock = threading.Lock()
        self._batch: BatchLogRecordProcessor | None = None
        self._shutdown = False

    @property
    def started(self) -> bool:
        return self._batch is not None

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        with self._lock:
            if self._shutdown:
                return
            if self._batch is None:
                self._batch = BatchLogRecordProcessor(self._exporter)
            batch = self._batch
        batch.on_emit(log_record)

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            batch = self._batch
        if batch is not None:
            batch.shutdown()  # exports what is queued, then shuts the exporter down
        else:
            self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        batch = self._batch
        return True if batch is None else batch.force_flush(timeout_millis)
