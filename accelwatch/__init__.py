"""Log training progress to the accelwatch agent watching this process.

    import accelwatch
    accelwatch.config({"lr": 3e-4, "batch_size": 64})
    for batch in loader:
        loss = train_step(batch)
        accelwatch.log(loss=loss)
        accelwatch.step()

Every call is cheap and never raises: with no agent watching it does nothing (set
``ACCELWATCH_MODE=offline`` to record into a local DuckDB file instead). This package imports
only the standard library; see docs/tracking.md.
"""

from accelwatch._client import Client

_default = Client()

log = _default.log
step = _default.step
config = _default.config
tag = _default.tag
finish = _default.finish
flush = _default.flush
stats = _default.stats

__all__ = ["Client", "config", "finish", "flush", "log", "stats", "step", "tag"]
