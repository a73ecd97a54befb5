"""What a recording's foreground waits on, without waking to poll: the target's end and a bell.

The session used to check its target four times a second. Now it sleeps in ``poll`` on the
target's pidfd (readable the moment the process exits, child or not; Linux 5.3+) and on a pipe,
the bell, that a stop request (a signal handler, the viewer, a timeout), a new tick (when a
headless line is printed per tick) or :meth:`EndWatch.close` rings. Without a pidfd (an older
kernel, or the target already gone) it falls back to waking every ``FALLBACK_POLL_S``.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading

#: How often the wait checks its target when the kernel gives no pidfd.
FALLBACK_POLL_S = 0.25


class EndWatch:
    """The target's pidfd and a bell, for one session's waits (``close`` when done)."""

    def __init__(self, pid: int | None) -> None:
        self._bell_r, self._bell_w = os.pipe()
        os.set_blocking(self._bell_r, False)
        os.set_blocking(self._bell_w, False)  # ringing never blocks: a full pipe rings anyway
        self._poll = select.poll()
        self._poll.register(self._bell_r, select.POLLIN)
        self.pidfd: int | None = None
        if pid is not None and hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):  # no such process, or a kernel without pidfds
                self.pidfd = os.pidfd_open(pid)
                self._poll.register(self.pidfd, select.POLLIN)
        self._closed = False
        #: Reentrant: a signal handler may ring on the thread that is closing.
        self._lock = threading.RLock()

    def ring(self, *_: object) -> None:
        """Wake the wait (from any thread or a signal handler; never blocks, never raises;
        after ``close`` it does nothing, never writing to a number since reused)."""
        with self._lock:
            if not self._closed:
                with contextlib.suppress(OSError):
                    os.write(self._bell_w, b"!")

    def sleep(self, timeout_s: float | None) -> bool:
        """Until the target ends, the bell rings, or ``timeout_s`` (None: no limit) passes;
        False once closed (the session finished: there is nothing left to wait for)."""
        if self._closed:
            return False
        if self.pidfd is None:
            timeout_s = FALLBACK_POLL_S if timeout_s is None else min(timeout_s, FALLBACK_POLL_S)
        self._poll.poll(None if timeout_s is None else max(0, int(timeout_s * 1000) + 1))
        with contextlib.suppress(OSError):  # empty the bell; the target's end stays readable
            while os.read(self._bell_r, 4096):
                pass
        return not self._closed

    def close(self) -> None:
        """Wake a wait still sleeping (it returns False) and release the descriptors."""
        with self._lock:
            if self._closed:
                return
            self.ring()
            self._closed = True
            for fd in (self._bell_r, self._bell_w, self.pidfd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
