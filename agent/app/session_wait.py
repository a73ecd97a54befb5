"""What a recording's foreground waits on, without waking to poll: the target's end and a bell.

The session used to check its target four times a second. Now its wait sleeps on a condition
that a stop request (the signal thread, the viewer, a timeout), a new tick (when a headless line
is printed per tick), :meth:`EndWatch.close`, and the target's end ring. The target's end comes
from its pidfd (readable the moment the process exits, child or not; Linux 5.3+), watched by a
thread that sleeps in ``poll`` until then. Without a pidfd (an older kernel, or the target
already gone) the wait falls back to waking every ``FALLBACK_POLL_S``.

Each ring counts, so a wait that sleeps from count N returns once the count moved, even when
the cause is gone again by the time it runs (a stop request withdrawn at once), and any number
of threads may wait at once (a viewer's worker and the main thread).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.app.session import Session

#: How often the wait checks its target when the kernel gives no pidfd.
FALLBACK_POLL_S = 0.25


class EndWatch:
    """The target's pidfd and a bell, for one session's waits (``close`` when done)."""

    def __init__(self, pid: int | None) -> None:
        self._cond = threading.Condition()
        self.rings = 0
        self.closed = False
        self.pidfd: int | None = None
        self._thread: threading.Thread | None = None
        if pid is not None and hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):  # no such process, or a kernel without pidfds
                self.pidfd = os.pidfd_open(pid)
        if self.pidfd is not None:
            self._stop_r, self._stop_w = os.pipe()
            self._thread = threading.Thread(
                target=self._watch_end, name="accelwatch-end-watch", daemon=True
            )
            self._thread.start()

    def _watch_end(self) -> None:
        """Sleep until the target exits (then ring) or :meth:`close`."""
        assert self.pidfd is not None
        waiting = select.poll()
        waiting.register(self.pidfd, select.POLLIN)
        waiting.register(self._stop_r, select.POLLIN)
        with contextlib.suppress(OSError):
            if any(fd == self.pidfd for fd, _ in waiting.poll()):
                self.ring()

    def ring(self, *_: object) -> None:
        """Wake every wait (from any thread; a subscriber's call on the sampler thread)."""
        with self._cond:
            self.rings += 1
            self._cond.notify_all()

    def sleep(self, since: int, timeout_s: float | None) -> bool:
        """Until the bell rang since count ``since``, or ``timeout_s`` (None: no limit) passed;
        False once closed (the session finished: there is nothing left to wait for)."""
        if self.pidfd is None:
            timeout_s = FALLBACK_POLL_S if timeout_s is None else min(timeout_s, FALLBACK_POLL_S)
        with self._cond:
            self._cond.wait_for(
                lambda: self.rings != since or self.closed,
                None if timeout_s is None else max(0.0, timeout_s),
            )
            return not self.closed

    def close(self) -> None:
        """Wake every wait still sleeping (they return False), end the watching thread."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"!")
            self._thread.join(1.0)
            for fd in (self._stop_r, self._stop_w, self.pidfd):
                with contextlib.suppress(OSError):
                    os.close(fd)  # type: ignore[arg-type]


def wait_for_end(
    session: Session, watch: EndWatch, on_tick: Callable[[], None] | None = None
) -> None:
    """``Session.wait``: until the target exits, the duration passes or a stop is requested
    (one made while this waits ends it, even if withdrawn before it wakes); ``on_tick`` after
    each new tick (the hub rings the bell then)."""
    duration = session.config.duration
    deadline = time.monotonic() + duration if duration else None
    stops = session.stop_requests
    if on_tick is not None:
        session.hub.subscribe(watch.ring)
    try:
        while True:
            rung = watch.rings
            if not session.target_alive():
                session.request_stop("target exited")
            if deadline is not None and time.monotonic() >= deadline:
                session.request_stop("duration reached")
            if session.stop_requested.is_set() or session.stop_requests != stops:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if not watch.sleep(rung, left):
                break
            if session.stop_requested.is_set() or session.stop_requests != stops:
                break
            if on_tick is not None:
                on_tick()
    finally:
        if on_tick is not None:
            session.hub.unsubscribe(watch.ring)
