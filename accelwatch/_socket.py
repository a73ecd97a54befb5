"""The client's socket side: where the agent is, and a bounded queue of datagrams for it.

A send that fails keeps its datagram in a bounded queue (:data:`MAX_PENDING` messages) retried
with backoff: 2 ms after EAGAIN (the agent is alive, its queue full), 50 ms doubling to 2 s
after ENOENT / ECONNREFUSED (no agent yet, or a dead one); what overflows is dropped and
counted. At most :data:`MAX_SENDS_PER_CALL` datagrams go out per call, so a backlog never
stalls one call of the training loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections import deque
from collections.abc import Mapping
from typing import Any

from accelwatch import _wire

#: Messages waiting for an agent that does not answer; beyond, the oldest are dropped, counted.
MAX_PENDING = 8192
#: A found agent that keeps refusing for this long is given up (searched for again later).
GIVE_UP_S = 10.0
RETRY_MIN_S, RETRY_MAX_S = 0.05, 2.0
#: Datagrams one call sends at most (a backlog after an outage must not stall one call).
MAX_SENDS_PER_CALL = 2
#: Retry delay after EAGAIN: the agent is alive but its queue (often 10 datagrams) is full.
RETRY_BUSY_S = 0.002
_ABSENT_ERRNOS = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR)


class SocketSink:
    """A path to send datagrams to, with a bounded queue of what could not be sent yet."""

    def __init__(self, path: str, *, named: bool) -> None:
        self.path = path
        #: Named in our environment (``accelwatch run``) rather than found by searching.
        self.named = named
        self._sock: socket.socket | None = None
        self._pending: deque[tuple[bytes, int]] = deque()
        self._pending_msgs = 0
        self._retry_at = 0.0
        self._backoff = 0.0
        self._failing_since: float | None = None
        self.dropped = 0
        self.sent = 0
        self.errors: dict[str, int] = {}

    def send(
        self,
        header: dict[str, Any],
        messages: list[Any],
        now: float,
        limit: int | None = MAX_SENDS_PER_CALL,
    ) -> None:
        """Queue ``messages`` as datagrams and send up to ``limit`` queued ones (None: all)."""
        if now < self._retry_at and self._pending_msgs >= MAX_PENDING:
            self.dropped += len(messages)  # the agent does not take them: not even encoded
            return
        if messages:
            header["dropped"] = self.dropped
            chunks = _chunks(header, messages)
            self.dropped += len(messages) - sum(n for _, n in chunks)  # one too big to send
            for chunk in chunks:
                self._pending.append(chunk)
                self._pending_msgs += chunk[1]
        if now >= self._retry_at and self._pending:
            self._drain(now, len(self._pending) if limit is None else limit)
        while self._pending_msgs > MAX_PENDING and self._pending:
            _, n = self._pending.popleft()
            self._pending_msgs -= n
            self.dropped += n

    def _drain(self, now: float, limit: int) -> None:
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            for _ in range(limit):  # a backlog is sent over several calls
                if not self._pending:
                    break
                data, n = self._pending[0]
                self._sock.sendto(data, self.path)
                self._pending.popleft()
                self._pending_msgs -= n
                self.sent += n
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            self.errors[name] = self.errors.get(name, 0) + 1
            if exc.errno == errno.EMSGSIZE and self._pending:  # never fits: drop just that one
                _, n = self._pending.popleft()
                self._pending_msgs -= n
                self.dropped += n
            if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
                self._retry_at = now + RETRY_BUSY_S  # alive, only busy: try again soon
                return
            if self._failing_since is None and exc.errno in _ABSENT_ERRNOS:
                self._failing_since = now
            self._backoff = min(RETRY_MAX_S, max(RETRY_MIN_S, self._backoff * 2))
            self._retry_at = now + self._backoff
            return
        self._backoff = 0.0
        self._failing_since = None

    def given_up(self, now: float) -> bool:
        """Refused for :data:`GIVE_UP_S`: the agent is gone (a later search may find another)."""
        return self._failing_since is not None and now - self._failing_since >= GIVE_UP_S

    def close(self) -> int:
        """Close the socket; the messages still queued are dropped (returned, and counted)."""
        lost = self._pending_msgs
        self.dropped += lost
        self._pending.clear()
        self._pending_msgs = 0
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        return lost


def _chunks(header: dict[str, Any], messages: list[Any]) -> list[tuple[bytes, int]]:
    """Encoded datagrams of at most :data:`~accelwatch._wire.MAX_DATAGRAM` bytes."""
    data = _wire.encode(header, messages)
    if len(data) <= _wire.MAX_DATAGRAM or len(messages) <= 1:
        return [(data, len(messages))] if len(data) <= _wire.MAX_DATAGRAM else []
    half = len(messages) // 2
    return _chunks(header, messages[:half]) + _chunks(header, messages[half:])


def find_socket(environ: Mapping[str, str]) -> SocketSink | None:
    """The agent's socket: named in the environment, else one for this process or an ancestor."""
    named = environ.get(_wire.ENV_SOCKET)
    if named:
        return SocketSink(named, named=True)
    dirs = [d for d in _wire.runtime_dirs(environ) if os.path.isdir(d)]
    if not dirs:
        return None
    pid = os.getpid()
    for _ in range(64):
        for d in dirs:
            path = os.path.join(d, _wire.pid_socket_name(pid))
            if os.path.exists(path):
                return SocketSink(path, named=False)
        pid = _parent(pid)
        if pid <= 1:
            return None
    return None


def _parent(pid: int) -> int:
    if pid == os.getpid():
        return os.getppid()
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0
