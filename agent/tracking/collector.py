"""The ``steps`` source's collector: step times and metrics the job's own client sends.

It is the ``steps`` source (not a sibling) because a step time from the client is the same
quantity as one imported from a log: the same metrics (``step.time``, ``step.count``) on the same
``rank`` entities, so the straggler and hang rules, the TUI and the exporters read live and
imported step times alike, and nothing is declared twice. Each tick carries every step duration
the ranks reported since the previous one (several ``step.time`` values per rank and tick; the
analysis averages them per bucket) and the rank's step count; logged metrics, config and tags
ride along as records for the tracking tables.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

import numpy as np

from agent.catalog.steps import SOURCE, rank_entity
from agent.errors import CollectorUnavailable
from agent.identity import identity
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector
from agent.tracking.aggregate import Aggregator, TrackingTick
from agent.tracking.receiver import Receiver, ReceiverError, default_socket_path
from agent.tracking.tables import (
    METRICS_RECORD,
    SETTINGS_RECORD,
    metric_columns,
    setting_columns,
)

#: The ``steps`` option naming the socket (``accelwatch run`` passes the one it put in the
#: job's environment); without it, the root pid's socket in the runtime dir (attach).
SOCKET_OPTION = "socket"


class TrackingCollector(Collector):
    source = SOURCE

    def __init__(self) -> None:
        self.aggregator = Aggregator()
        self.receiver: Receiver | None = None
        self._host = socket.gethostname()
        self._root: int | None = None

    def start(self, ctx: CollectContext) -> None:
        path = dict(ctx.options.get(SOURCE, {})).get(SOCKET_OPTION)
        if not path:
            if ctx.root_pid is None:
                raise CollectorUnavailable("no job is watched: nothing reports training steps")
            path = default_socket_path(ctx.root_pid)
        self._root = ctx.root_pid
        self.receiver = Receiver(path, self.aggregator)
        try:
            self.receiver.start()
        except ReceiverError as exc:
            self.receiver = None
            raise CollectorUnavailable(f"training client socket: {exc}") from None

    @property
    def path(self) -> str | None:
        return self.receiver.path if self.receiver else None

    def collect(self, now: float) -> Batch:
        return tick_batch(self.aggregator.take(), now, self._host, self._root)

    def health(self) -> dict[str, Any]:
        health = self.aggregator.counters.health()
        where = self.aggregator.dropping
        health["tracking.state"] = (
            "ok"
            if where is None
            else f"losing training messages ({where} side: more than is kept per tick)"
        )
        if self.receiver is not None:
            health["tracking.paused_s"] = round(self.receiver.paused_s, 3)
        return health

    def settle(self) -> None:
        if self.receiver is not None:
            self.receiver.drain_rest()

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.close()
            self.receiver = None


def tick_batch(tick: TrackingTick, now: float, host: str, root: int | None = None) -> Batch:
    """The ``steps`` batch of one tick: samples, rank identities, events, tracking records."""
    b = BatchBuilder(SOURCE, now)
    for rank, part in sorted(tick.ranks.items()):
        entity = rank_entity(rank)
        for seconds in part.step_times:
            b.add(entity, "step.time", seconds)
        if part.steps is not None:
            b.add(entity, "step.count", part.steps)
    for rank, (pid, header) in sorted(tick.joined.items()):
        who = rank_identity(pid, header, host, root)
        b.describe(rank_entity(rank), **who)
        b.event("train_rank_joined", rank_entity(rank), **who)
    for ts, rank, pid in tick.finished:
        b.event("train_finished", rank_entity(rank), ts=ts, pid=pid)
    for kind, noted_rank, detail in tick.notes:
        b.event(kind, "agent" if noted_rank is None else rank_entity(noted_rank), **detail)
    records: dict[str, dict[str, np.ndarray]] = {}
    if tick.metrics:  # columnar: a tick the store must keep while its disk fails stays small
        records[METRICS_RECORD] = metric_columns(tick.metrics)
    if tick.settings:
        records[SETTINGS_RECORD] = setting_columns(tick.settings)
    batch = b.build()
    return dataclasses.replace(batch, records=records) if records else batch


def rank_identity(
    pid: int, header: dict[str, Any], host: str, root: int | None = None
) -> dict[str, Any]:
    """Who a rank is: its allow-listed environment when it is in the watched tree (``root`` and
    its descendants; None: this process, offline), else only what its datagram said."""
    env = _process_env(pid) if _in_tree(pid, root) else {}
    who = identity(env)
    for key in ("rank", "local_rank", "world_size"):
        if who.get(key) is None and type(header.get(key)) is int:
            who[key] = header[key]
    who = {k: v for k, v in who.items() if v is not None}
    return {"pid": pid, "host": host, **who}


def _in_tree(pid: int, root: int | None) -> bool:
    """Whether ``pid`` is ``root`` or one of its descendants: only the watched job's
    environment is ever read, whatever pid a datagram claims."""
    if root is None:
        return pid == os.getpid()
    if pid == root:
        return True
    try:
        import psutil

        return any(p.pid == root for p in psutil.Process(pid).parents())
    except Exception:
        return False


def _process_env(pid: int) -> dict[str, str]:
    if pid == os.getpid():
        from agent.target import allowed_env

        return allowed_env(dict(os.environ))
    try:
        import psutil

        from agent.target import target_env

        return target_env(psutil.Process(pid))
    except Exception:  # gone, or another namespace: what it said is all we know
        return {}
