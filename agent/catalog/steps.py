"""Training-step metrics (source ``steps``); the entity is the rank, e.g. ``rank0``.

They come from the job itself, not from a device: live from the ``accelwatch`` client in the
training script (the collector, :mod:`agent.tracking.collector`, receives them), or from a
per-rank step-time log imported with ``accelwatch import``. When present, the
straggler and hang rules prefer them over device signals.
"""

from __future__ import annotations

from agent.catalog import metric
from agent.source import Collector, EntityKind, SourceSpec

SOURCE = "steps"
RANK_PREFIX = "rank"


def _m(name, unit, kind, description, **kw):
    return metric(name, unit, kind, description, source=SOURCE, **kw)


METRICS = [
    _m(
        "step.time",
        "s",
        "gauge",
        "Wall-clock time of the rank's latest training step (mini-batch).",
    ),
    _m("step.count", "{step}", "counter", "Training steps the rank has completed."),
]


def rank_entity(rank: int | str) -> str:
    """The entity name of a rank: ``rank3``."""
    return f"{RANK_PREFIX}{rank}"


def _collector() -> Collector:
    from agent.tracking.collector import TrackingCollector  # the socket, only when recording

    return TrackingCollector()


SPEC = SourceSpec(
    name=SOURCE,
    label="Training steps",
    metrics=tuple(METRICS),
    entity_kinds=(EntityKind("rank", f"{RANK_PREFIX}[0-9]+"),),
    collector=_collector,
    start_order=5,  # early: the job may report before the slower sources have started
)
