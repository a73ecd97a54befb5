"""The agent's end of the training client's socket: private, drained by a thread, rate-bounded.

The socket is bound in a directory that is the user's own and mode 0700 (created so, or refused
when it is not), and is itself 0600: only the user's processes can send. A thread drains it into
the :class:`~agent.tracking.aggregate.Aggregator`, at most :data:`MAX_MESSAGES_PER_S` messages a
second: beyond that it pauses, the kernel queue fills, and senders see EAGAIN (they drop and
count, and the next datagram says so). The sampler never waits on any of it. Idle, the thread
sleeps in ``poll`` on the socket and a wake-up pipe (no timeout: it costs nothing while no one
logs), and :meth:`Receiver.close` writes to the pipe, so stopping is immediate.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import socket
import stat
import threading
import time

from accelwatch import _wire
from agent.tracking.aggregate import Aggregator

#: Messages decoded per second at most (a flood costs the agent a bounded share of a core).
MAX_MESSAGES_PER_S = 50_000
#: Kernel receive buffer asked for (absorbs bursts between two wake-ups).
RCVBUF_BYTES = 4 * 2**20
#: Longest Unix socket path (sun_path holds 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


class ReceiverError(OSError):
    """The socket cannot be bound where asked (a directory that is not private, a live agent)."""


def private_dir(path: str) -> bool:
    """Make sure ``path`` is a directory of ours with mode 0700; True if we created it."""
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise ReceiverError(f"cannot create {path}: {exc.strerror or exc}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ReceiverError(f"{path} is not a directory (a symlink?); refusing to use it")
    if st.st_uid != os.getuid():
        raise ReceiverError(f"{path} belongs to uid {st.st_uid}, not to us; refusing to use it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return created


def default_socket_path(root_pid: int, environ: dict[str, str] | None = None) -> str:
    """Where an attaching agent binds for the job rooted at ``root_pid`` (the client looks there)."""
    env = dict(os.environ) if environ is None else environ
    return os.path.join(_wire.runtime_dirs(env)[0], _wire.pid_socket_name(root_pid))


def run_socket_path(environ: dict[str, str] | None = None) -> str:
    """A fresh socket path for a launched job (named in its environment as ACCELWATCH_SOCKET)."""
    env = dict(os.environ) if environ is None else environ
    return os.path.join(_wire.runtime_dirs(env)[0], f"run-{secrets.token_hex(6)}.sock")


#: Sockets bound before the job that sends to them started (``accelwatch run``), by path, until
#: the ``steps`` collector's receiver takes them over: (socket, inode, directory we created).
_EARLY: dict[str, tuple[socket.socket, int, str | None]] = {}


def _bind(path: str) -> tuple[socket.socket, int, str | None]:
    """A non-blocking datagram socket bound at ``path``, mode 0600 from its first byte (its
    inode's mode is set before ``bind`` creates the file), in a private directory."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ReceiverError(f"socket path too long for a Unix socket: {path}")
    directory = os.path.dirname(path) or "."
    made = directory if private_dir(directory) else None
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(path)
        os.chmod(path, 0o600)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.setblocking(False)
        ino = os.stat(path).st_ino
    except OSError as exc:
        sock.close()
        raise ReceiverError(f"cannot bind {path}: {exc.strerror or exc}") from None
    return sock, ino, made


def _clear_stale(path: str) -> None:
    """A socket left by a dead agent is removed; one that answers belongs to a live agent."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise ReceiverError(f"another agent already receives at {path}")


def bind_early(path: str) -> None:
    """Bind ``path`` before the job that sends to it starts: what a job sends before the
    ``steps`` collector runs waits in the kernel's queue, where it used to fail with ENOENT and
    be lost (a short rank could exit before the agent's sources had started)."""
    _EARLY[path] = _bind(path)


def release_early(path: str) -> None:
    """Close and remove a socket :func:`bind_early` bound that no receiver took over (the
    ``steps`` source is off, or the start failed)."""
    early = _EARLY.pop(path, None)
    if early is None:
        return
    sock, ino, made = early
    sock.close()
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    if made is not None:
        with contextlib.suppress(OSError):
            os.rmdir(made)


class Receiver:
    """Binds ``path`` on :meth:`start`, drains it until :meth:`close`, then removes it."""

    def __init__(
        self, path: str, aggregator: Aggregator, *, max_messages_per_s: int = MAX_MESSAGES_PER_S
    ) -> None:
        self.path = path
        self.aggregator = aggregator
        self.max_messages_per_s = max_messages_per_s
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._made_dir: str | None = None
        self._ino: int | None = None
        #: Read and write ends of the pipe that wakes the drain thread to stop.
        self._wake: tuple[int, int] | None = None
        #: Seconds the drain paused because senders went over the rate.
        self.paused_s = 0.0
        self.receive_errors = 0

    def start(self) -> None:
        """Drain the socket: the one :func:`bind_early` bound for this path, or bound now."""
        early = _EARLY.pop(self.path, None)
        self._sock, self._ino, self._made_dir = early if early is not None else _bind(self.path)
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._drain, name="accelwatch-tracking", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        sock, wake = self._sock, self._wake
        assert sock is not None and wake is not None
        idle = select.poll()  # poll, not select: any fd number
        idle.register(sock, select.POLLIN)
        idle.register(wake[0], select.POLLIN)
        window = time.monotonic()
        count = 0
        size = 2 * _wire.MAX_DATAGRAM
        while not self._stop.is_set():
            try:
                data = sock.recv(size)
            except BlockingIOError:  # drained: sleep until a datagram or close()
                idle.poll()
                continue
            except OSError:
                if self._stop.is_set():
                    break
                self.receive_errors += 1
                self._stop.wait(0.1)
                continue
            count += self.aggregator.feed_bytes(data, time.time())
            now = time.monotonic()
            if count >= self.max_messages_per_s:
                wait = window + 1.0 - now
                if wait > 0:
                    self.paused_s += wait
                    self._stop.wait(wait)
                window, count = time.monotonic(), 0
            elif now - window >= 1.0:
                window, count = now, 0

    def drain_rest(self) -> None:
        """Stop the drain thread and take in every datagram still queued on the socket (the
        job's last steps, sent just before it exited, that the thread had not read yet)."""
        self._stop_thread()
        if self._sock is None:
            return
        size = 2 * _wire.MAX_DATAGRAM
        while True:
            try:
                data = self._sock.recv(size)
            except OSError:  # BlockingIOError: nothing left
                return
            self.aggregator.feed_bytes(data, time.time())

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def close(self) -> None:
        """Stop draining, remove our socket (not one another agent bound since) and our dir."""
        self._stop_thread()
        if self._wake is not None:
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._ino:
                    os.unlink(self.path)
        if self._made_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._made_dir)  # only when empty: another agent may use it
            self._made_dir = None
