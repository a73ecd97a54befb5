"""Datagrams from training processes → per-rank step times, metric rows, config and tags.

Pure and bounded: what a tick may hold is capped per rank and in total, anything beyond is
dropped and counted, so a flood of ``log()`` from every rank costs the agent a fixed amount of
memory. The client measures each step's duration itself (monotonic clock), so a lost datagram
costs that step's time, never a wrong one; step counts are the client's own.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accelwatch import _wire

#: Per tick: metric values kept in all, and per rank at least (a rank alone may use the whole
#: budget; with others, an equal share but not less). Beyond: dropped, counted. A kept value
#: costs ~36 bytes once columnar; the store may hold several hundred ticks while a disk fails.
MAX_RANK_VALUES = 2048
MAX_TICK_VALUES = 8192
#: Per tick and rank: step durations kept (step counts stay exact).
MAX_RANK_STEPS = 2048
#: Per run: config and tag keys kept.
MAX_KEYS = 4096
MAX_NAME = 200
MAX_VALUE_TEXT = 4096
#: Senders remembered (pids); a job that forks endlessly cannot grow the table.
MAX_SENDERS = 4096
#: Ranks given an entity; a bogus rank number cannot create unbounded entities.
MAX_RANK = 1 << 20


@dataclass
class RankTick:
    """One rank's part of a tick."""

    step_times: list[float] = field(default_factory=list)
    steps: int | None = None
    #: Metric values kept this tick, and values or step times dropped.
    values: int = 0
    dropped: int = 0


@dataclass
class TrackingTick:
    """What the receiver gathered since the previous tick."""

    ranks: dict[int, RankTick]
    #: (ts, rank, step, name, value)
    metrics: list[tuple[float, int, int | None, str, float]]
    #: (ts, kind, rank, key, json value); kind is ``config`` or ``tag``
    settings: list[tuple[float, str, int, str, str]]
    #: Ranks seen for the first time: rank → (pid, header)
    joined: dict[int, tuple[int, dict[str, Any]]]
    finished: list[tuple[float, int, int]]
    #: (kind, rank, detail) of agent events (drops, bad messages)
    notes: list[tuple[str, int | None, dict[str, Any]]]


@dataclass
class TrackingCounters:
    """Totals since the start, for the health channel and ``run_end``."""

    datagrams: int = 0
    messages: int = 0
    dropped_in_agent: int = 0
    dropped_in_client: int = 0
    bad_datagrams: int = 0
    bad_messages: int = 0
    ranks: int = 0

    def health(self) -> dict[str, Any]:
        return {f"tracking.{k}": v for k, v in self.__dict__.items()}


class Aggregator:
    """Feed it datagrams (any thread), take a tick (another thread); locked in between."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._lock = threading.Lock()
        self.counters = TrackingCounters()
        self._senders: dict[int, int] = {}  # pid → rank
        self._client_dropped: dict[int, int] = {}  # pid → the client's cumulative count
        self._ranks_seen: set[int] = set()
        #: What one rank may keep per tick: the whole budget alone, a fair share with others.
        self._rank_cap = MAX_TICK_VALUES
        self._keys: set[tuple[str, str]] = set()
        self._dropping_before = False
        self._client_dropping_before = False
        self._new_tick()

    def _new_tick(self) -> None:
        self._tick = TrackingTick({}, [], [], {}, [], [])
        self._tick_values = 0
        self._tick_client_dropped = 0
        self._tick_bad = 0

    # -- feeding
    def feed_bytes(self, data: bytes, now: float) -> int:
        """One datagram as received; the number of messages it held (0 if unreadable)."""
        try:
            obj = _wire.decode(data)
        except ValueError:
            with self._lock:
                self.counters.bad_datagrams += 1
                self._tick_bad += 1
            return 0
        return self.feed(obj, now)

    def feed(self, datagram: Mapping[str, Any], now: float) -> int:
        """One decoded datagram (``accelwatch._wire`` format)."""
        pid = datagram.get("pid")
        rank = datagram.get("rank")
        if type(pid) is not int:
            with self._lock:
                self.counters.bad_datagrams += 1
                self._tick_bad += 1
            return 0
        if type(rank) is not int or not 0 <= rank < MAX_RANK:
            rank = 0
        messages: Sequence[Any] = datagram.get("m") or ()
        with self._lock:
            self.counters.datagrams += 1
            self.counters.messages += len(messages)
            self._sender(pid, rank, datagram)
            dropped = datagram.get("dropped")
            if type(dropped) is int and dropped > self._client_dropped.get(pid, 0):
                more = dropped - self._client_dropped.get(pid, 0)
                self._client_dropped[pid] = dropped
                self.counters.dropped_in_client += more
                self._tick_client_dropped += more
            ranked = self._rank(rank)
            for message in messages:
                try:
                    self._message(message, rank, ranked, pid)
                except (TypeError, ValueError, IndexError, KeyError, AttributeError):
                    self.counters.bad_messages += 1
                    self._tick_bad += 1
        return len(messages)

    def _sender(self, pid: int, rank: int, header: Mapping[str, Any]) -> None:
        if pid in self._senders:
            return
        if len(self._senders) >= MAX_SENDERS:
            self._senders.pop(next(iter(self._senders)))
            self._client_dropped.pop(next(iter(self._client_dropped)), None)
        self._senders[pid] = rank
        if rank not in self._ranks_seen:
            self._ranks_seen.add(rank)
            self.counters.ranks = len(self._ranks_seen)
            self._rank_cap = max(MAX_RANK_VALUES, MAX_TICK_VALUES // len(self._ranks_seen))
            self._tick.joined[rank] = (pid, {k: v for k, v in header.items() if k != "m"})

    def _rank(self, rank: int) -> RankTick:
        got = self._tick.ranks.get(rank)
        if got is None:
            got = self._tick.ranks[rank] = RankTick()
        return got

    def _message(self, message: Sequence[Any], rank: int, ranked: RankTick, pid: int) -> None:
        kind = message[0]
        ts = float(message[1])
        if not math.isfinite(ts):
            raise ValueError("bad time")
        if kind == _wire.LOG:
            step = message[2]
            step = step if type(step) is int else None
            for name, value in message[3].items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    self.counters.bad_messages += 1
                    continue
                if self._tick_values >= MAX_TICK_VALUES or ranked.values >= self._rank_cap:
                    ranked.dropped += 1
                    self.counters.dropped_in_agent += 1
                    continue
                self._tick.metrics.append((ts, rank, step, str(name)[:MAX_NAME], float(value)))
                self._tick_values += 1
                ranked.values += 1
        elif kind == _wire.STEP:
            n, dt = message[2], message[3]
            if type(n) is int:
                ranked.steps = n if ranked.steps is None else max(ranked.steps, n)
            if isinstance(dt, (int, float)) and not isinstance(dt, bool) and dt >= 0:
                if len(ranked.step_times) < MAX_RANK_STEPS:
                    ranked.step_times.append(float(dt))
                else:
                    ranked.dropped += 1
                    self.counters.dropped_in_agent += 1
        elif kind in (_wire.CONFIG, _wire.TAG):
            label = "config" if kind == _wire.CONFIG else "tag"
            for key, value in message[2].items():
                name = str(key)[:MAX_NAME]
                if (label, name) not in self._keys:
                    if len(self._keys) >= MAX_KEYS:
                        self.counters.dropped_in_agent += 1
                        continue
                    self._keys.add((label, name))
                text = json.dumps(value, default=str)[:MAX_VALUE_TEXT]
                self._tick.settings.append((ts, label, rank, name, text))
        elif kind == _wire.FINISH:
            self._tick.finished.append((ts, rank, pid))
        else:
            raise ValueError(f"unknown message kind {kind!r}")

    @property
    def dropping(self) -> str | None:
        """Where messages were lost in the latest tick (``agent``, ``client``), or None."""
        if self._dropping_before:
            return "agent"
        return "client" if self._client_dropping_before else None

    # -- taking
    def take(self) -> TrackingTick:
        """Everything since the previous take, with a note for each new streak of drops."""
        with self._lock:
            tick = self._tick
            dropped = {r: t.dropped for r, t in tick.ranks.items() if t.dropped}
            client_dropped, bad = self._tick_client_dropped, self._tick_bad
            self._new_tick()
            if dropped and not self._dropping_before:
                for rank, n in sorted(dropped.items()):
                    tick.notes.append(
                        (
                            "train_dropped",
                            rank,
                            {
                                "where": "agent",
                                "messages": n,
                                "total": self.counters.dropped_in_agent,
                                "severity": "warning",
                            },
                        )
                    )
            if client_dropped and not self._client_dropping_before:
                tick.notes.append(
                    (
                        "train_dropped",
                        None,
                        {
                            "where": "client",
                            "messages": client_dropped,
                            "total": self.counters.dropped_in_client,
                            "severity": "warning",
                        },
                    )
                )
            if bad:
                tick.notes.append(
                    (
                        "train_bad_message",
                        None,
                        {
                            "count": bad,
                            "severity": "warning",
                            "total": self.counters.bad_datagrams + self.counters.bad_messages,
                        },
                    )
                )
            self._dropping_before = bool(dropped)
            self._client_dropping_before = bool(client_dropped)
        return tick
