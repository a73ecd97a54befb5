"""The launched job: how it starts, where its output goes, how it is asked to stop.

The job comes first. Under the terminal UI its stdout/stderr go into a pipe that a thread drains
into the job log (:class:`OutputPump`): the drain never stops reading, so a full disk or a slow
log costs log lines (dropped and counted), never the job's own ``print``. Stopping is a shell's
escalation (:class:`JobSignals`): SIGINT, then SIGTERM, and SIGKILL only when the user asks again
after the documented grace (``--stop-timeout``); accelwatch never kills the job by itself.
See docs/promises.md.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from accelwatch._wire import ENV_SOCKET
from agent.catalog.steps import SOURCE as STEPS_SOURCE
from agent.store import user_umask
from agent.tracking.collector import SOCKET_OPTION
from agent.tracking.receiver import ReceiverError, bind_early, run_socket_path

if TYPE_CHECKING:
    from agent.app.session import Session

if TYPE_CHECKING:
    pass

#: Default seconds after the first stop signal before a further request may send SIGKILL.
DEFAULT_STOP_TIMEOUT_S = 30.0
#: How long finalizing waits for the job's output still in the pipe (a daemon may hold it).
PUMP_DRAIN_S = 2.0

Note = Callable[..., None]


class OutputPump:
    """Drains the job's output pipe into a 0600 log; what cannot be written is dropped, counted.

    The log is written with ``os.write`` on an ``O_APPEND`` descriptor: no buffer that a
    failing write could wedge, and after an error the next chunk is tried again (the disk may
    have room again).
    """

    CHUNK = 64 * 1024

    def __init__(self, path: str, note: Note) -> None:
        self.path = path
        self._note = note
        self.bytes_written = 0
        self.bytes_dropped = 0
        self.write_errors = 0
        self._failing = False
        self._log_fd: int | None = None
        try:
            self._log_fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:  # no log at all: the job still runs, its output is counted
            self._fail(exc)
        read_fd, self.write_fd = os.pipe()
        self._read_fd = read_fd
        self._thread = threading.Thread(
            target=self._drain, name="accelwatch-job-output", daemon=True
        )

    def start(self) -> None:
        """Start draining and close our copy of the job's end (EOF once every writer exits)."""
        self._thread.start()
        os.close(self.write_fd)

    def health(self) -> dict[str, Any]:
        return {
            "job_output.bytes_dropped": self.bytes_dropped,
            "job_output.write_errors": self.write_errors,
        }

    def join(self, timeout: float = PUMP_DRAIN_S) -> None:
        self._thread.join(timeout)

    def _drain(self) -> None:
        try:
            while True:
                try:
                    data = os.read(self._read_fd, self.CHUNK)
                except InterruptedError:
                    continue
                if not data:
                    break
                self._write(data)
        finally:
            os.close(self._read_fd)
            if self._log_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._log_fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._log_fd is None:
                self.bytes_dropped += len(view)
                return
            try:
                written = os.write(self._log_fd, view)
            except OSError as exc:
                self.bytes_dropped += len(view)
                self._fail(exc)
                return
            self.bytes_written += written
            view = view[written:]
        if self._failing:
            self._failing = False
            self._note(
                "job_output_resumed", "agent", path=self.path, bytes_dropped=self.bytes_dropped
            )

    def _fail(self, exc: OSError) -> None:
        self.write_errors += 1
        if not self._failing:  # one event per streak of failures, not one per chunk
            self._failing = True
            reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            self._note("job_output_dropped", "agent", path=self.path, reason=reason)


def launch_job(
    command: list[str], pump: OutputPump | None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` with the user's umask and our environment plus ``env`` (the training
    client's socket); under the UI in its own process group, its output into ``pump`` and
    stdin from /dev/null (the UI owns the terminal)."""
    job_env = {**os.environ, **env} if env else None
    if pump is None:  # headless: the job shares the terminal as under a shell
        return subprocess.Popen(command, umask=user_umask(), env=job_env)
    group: dict[str, Any] = (
        {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    )
    return subprocess.Popen(
        command,
        umask=user_umask(),
        env=job_env,
        stdin=subprocess.DEVNULL,
        stdout=pump.write_fd,
        stderr=pump.write_fd,
        **group,
    )


class JobSignals:
    """One stop escalation for a launched job: each request sends the next signal.

    1st request: SIGINT (what Ctrl-C in a shell sends; or the SIGTERM the agent got); 2nd: SIGTERM; later requests send
    SIGKILL only once ``stop_timeout`` seconds have passed since the first, else they say how
    long remains. ``own_group``: the job leads its own process group (under the UI), so signals
    go to the whole group as a shell's would; otherwise to the job's process alone.
    """

    def __init__(
        self,
        child: subprocess.Popen[bytes],
        *,
        stop_timeout: float,
        own_group: bool,
        note: Note,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.child = child
        self.stop_timeout = stop_timeout
        self.own_group = own_group
        self._note = note
        self._clock = clock
        self._lock = threading.Lock()
        self.requests = 0
        self.first_at: float | None = None
        self.detached = False
        self.hung_up = threading.Event()
        #: Where the job's output goes (shown when quitting), None when it has the terminal.
        self.log: str | None = None

    @property
    def pid(self) -> int:
        return self.child.pid

    def running(self) -> bool:
        return self.child.poll() is None

    def request_stop(self, signum: int = signal.SIGINT, *, delivered: bool = False) -> str:
        """One stop request (Ctrl-C, ``q`` → stop, SIGINT/SIGTERM to the agent); what was done.

        The first request passes ``signum`` on (what the agent got; SIGINT from the UI).
        ``delivered``: the terminal already sent it to the job (headless, same process group),
        so only the escalation advances.
        """
        with self._lock:
            if not self.running():
                return "the job has exited"
            now = self._clock()
            if self.first_at is None:
                self.first_at = now
            step = self.requests
            self.requests += 1
            if step == 0:
                name = signal.Signals(signum).name
                if delivered:
                    return f"the job got {name}; a second stop request sends SIGTERM"
                self.send(signum)
                return f"sent {name} to the job; a second stop request sends SIGTERM"
            if step == 1:
                self.send(signal.SIGTERM)
                return f"sent SIGTERM to the job; SIGKILL can be asked after {self.stop_timeout:g}s"
            waited = now - self.first_at
            if waited >= self.stop_timeout:
                self.send(signal.SIGKILL)
                return "sent SIGKILL to the job"
            left = self.stop_timeout - waited
            self._note("stop_pending", "agent", seconds_left=round(left, 1))
            return f"the job still runs; ask again in {left:.0f}s to send SIGKILL"

    def send(self, signum: int) -> None:
        """Deliver ``signum`` to the job (its group under the UI) and record it."""
        self._note("job_signal", "agent", signal=signal.Signals(signum).name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.own_group:
                os.killpg(self.child.pid, signum)
            else:
                self.child.send_signal(signum)


def terminal_delivered(signum: int) -> bool:
    """Whether a SIGINT/SIGHUP most likely came from our terminal to our whole foreground group
    (so a job sharing that group already got it): we lead the terminal's foreground group."""
    if signum not in (signal.SIGINT, signal.SIGHUP):
        return False
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
    return False


def leave_dead_terminal() -> None:
    """After SIGHUP: point fds 0/1/2 at /dev/null, so writes to the dead terminal neither fail
    (EIO) nor block, and a reader of fd 0 gets EOF instead of blocking (the UI, which would
    otherwise spin on the hung-up terminal, is closed within ``tui.live.HANGUP_POLL_S``)."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)


def exit_code(returncode: int | None) -> int | None:
    """A shell-style exit code: 128 + N when the command died of signal N."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


def install_signal_handlers(session: Session) -> None:
    """A launched job gets what a shell would give it; an attach stops recording.

    SIGINT/SIGTERM to the agent: one stop request of the job's escalation (SIGINT, SIGTERM,
    then SIGKILL only when asked after ``--stop-timeout``); recording goes on until the job
    exits. SIGHUP (the terminal closed): the UI leaves the dead terminal, the job gets SIGHUP
    (unless detached) and recording goes on until it exits. Attach: any of them stops recording.
    """

    def delivered(signum: int) -> bool:
        # a job in its own group (under the UI) never gets the terminal's signals itself
        job = session.job
        return job is not None and not job.own_group and terminal_delivered(signum)

    def respond(signum: int, from_terminal: bool) -> None:
        name = signal.Signals(signum).name
        session.note_signal(name)
        job = session.job
        if job is None or not job.running():
            session.request_stop(f"signal {name}")
        elif signum == signal.SIGHUP:
            # headless, the job shares our terminal and got the hangup from it already
            if job.own_group and not job.detached:
                job.send(signal.SIGHUP)
        else:
            message = job.request_stop(signum, delivered=from_terminal)
            if session.config.headless or job.detached:
                with contextlib.suppress(OSError):
                    os.write(2, f"accelwatch: {message}\n".encode())

    def handler(signum, _frame):
        from_terminal = delivered(signum)
        if signum == signal.SIGHUP:
            leave_dead_terminal()
            session.terminal_lost = True
            if session.job is not None:
                session.job.hung_up.set()
        # The rest takes locks (events, the escalation) that the interrupted main thread may
        # hold at this moment (a final sampler step): run it on a thread of its own.
        threading.Thread(
            target=respond, args=(signum, from_terminal), name="accelwatch-signal", daemon=True
        ).start()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if sys.platform != "win32":
        signal.signal(signal.SIGHUP, handler)


def client_socket(
    options: Mapping[str, Mapping[str, str]],
) -> tuple[dict[str, dict[str, str]], str | None, dict[str, str]]:
    """The training client's socket for a job about to be launched: the source options naming
    it to the ``steps`` collector, the path if it could be bound now (before the job starts, so
    a rank that logs and exits at once is not lost; otherwise the collector binds it and says
    why it cannot), and the job's environment entry."""
    path = run_socket_path()
    named = {k: dict(v) for k, v in options.items()}
    named.setdefault(STEPS_SOURCE, {})[SOCKET_OPTION] = path
    try:
        bind_early(path)
    except ReceiverError:
        return named, None, {ENV_SOCKET: path}
    return named, path, {ENV_SOCKET: path}
