"""One exception base for accelwatch; the CLI turns each into a one-line message and exit code."""

from __future__ import annotations


class AccelwatchError(Exception):
    """Base of every error the CLI reports as a one-line message."""

    exit_code = 1


class UsageError(AccelwatchError):
    """A flag value or argument is invalid."""

    exit_code = 2


class TargetError(AccelwatchError):
    """The process to watch does not exist, exited, or cannot be read."""

    exit_code = 3


class StoreError(AccelwatchError):
    """The database cannot be opened, created or written."""

    exit_code = 4


class StoreInUseError(StoreError):
    """Another agent holds the database file."""


class StoreCorruptError(StoreError):
    """The database file is truncated or damaged: no command reads or writes it."""


class CollectorUnavailable(AccelwatchError):
    """A collector's source is absent on this machine (no NVML, no TPU runtime...)."""

    exit_code = 5
