"""A recording session: target + collectors + sampler + store + consumers, from start to finalize.

Consumers (exporters, live analysis, the TUI) plug in through :class:`Consumer` and only read
the :class:`agent.snapshot.SnapshotHub`; nothing they do can block sampling.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.app.sources import (
    ABSENT,
    Simulators,
    candidate_collectors,
    install_simulators,
    quiet_absent_accelerators,
    start_collectors,
)
from agent.context import Consumer, LiveContext
from agent.errors import AccelwatchError, TargetError
from agent.model import Event, RunInfo
from agent.sampler import Sampler
from agent.snapshot import SnapshotHub
from agent.source import CollectContext, Collector
from agent.store import Store, user_umask
from agent.target import resolve_target, target_cmdline, target_cwd, target_env
from collectors.process import ProcessCollector


@dataclass
class SessionConfig:
    db_path: str
    interval: float = 1.0
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    headless: bool = True
    duration: float | None = None
    simulate: str | None = None
    otlp: str | None = None
    prometheus: str | None = None
    metric_names: str = "otel"
    flush_interval: float = 1.0
    live_analysis: bool = True
    quiet: bool = False
    #: Where a launched command's stdout/stderr go (None: the agent's own terminal). The TUI
    #: owns the terminal, so under it the job's output goes to this file.
    job_log: str | None = None


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class Session:
    """Owns one run. Use :meth:`attach` or :meth:`launch`, then :meth:`wait`, then :meth:`finish`."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.store = Store(config.db_path, flush_interval=config.flush_interval)
        self.hub = SnapshotHub()
        self.child: subprocess.Popen[bytes] | None = None
        self.run: RunInfo | None = None
        self.sampler: Sampler | None = None
        self.consumers: list[Consumer] = []
        self.stop_requested = threading.Event()
        self.stop_reason = ""
        self.simulator: Simulators | None = None
        self.process_collector: ProcessCollector | None = None
        #: (kind, source, detail) of collectors that did not start, noted on the first tick.
        self._notices: list[tuple[str, str, dict]] = []
        #: The consumers' narrow view of this run (built once recording starts).
        self.context: LiveContext | None = None
        self._finished = False

    # -- starting
    def launch(self, command: list[str]) -> RunInfo:
        """Start ``command`` (restoring the user's umask for it) and record it."""
        self._install_simulator()
        output = None
        try:
            if self.config.job_log:
                fd = os.open(self.config.job_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                output = os.fdopen(fd, "ab")
            self.child = subprocess.Popen(
                command,
                umask=user_umask(),
                stdout=output,
                stderr=output,
                stdin=subprocess.DEVNULL if output else None,
            )
        except OSError as exc:
            self.store.close()
            raise TargetError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
        finally:
            if output is not None:
                output.close()  # the child holds its own descriptor
        return self._begin(self.child.pid, mode="run")

    def attach(self, pid: int) -> RunInfo:
        resolve_target(pid)
        self._install_simulator()
        return self._begin(pid, mode="attach")

    def _install_simulator(self) -> None:
        if self.config.simulate:
            try:
                self.simulator = install_simulators(self.config.simulate, self._device_owner_pids)
            except AccelwatchError:
                self.store.close()
                raise

    def _device_owner_pids(self) -> list[int]:
        """The watched process while it lives (an exited process holds no device)."""
        root = self.run.pid if self.run is not None else None
        return [root] if root and root in self._job_pids() else []

    def _job_pids(self) -> frozenset[int]:
        return self.process_collector.pids if self.process_collector else frozenset()

    def _begin(self, pid: int, *, mode: str) -> RunInfo:
        import psutil

        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self.store.close()
            raise TargetError(f"process {pid} exited before recording started") from None
        cmdline = target_cmdline(proc)
        self.run = RunInfo(
            run_id=new_run_id(),
            name=self.config.name or _default_name(cmdline, pid),
            pid=pid,
            cmdline=cmdline,
            cwd=target_cwd(proc),
            host=socket.gethostname(),
            started=time.time(),
            interval=self.config.interval,
            db_path=str(self.store.path),
            tags=dict(self.config.tags),
            env=target_env(proc),
            mode=mode,
            simulated=self.config.simulate is not None,
            scenario=self.config.simulate,
        )
        self.process_collector = ProcessCollector(pid)
        ctx = CollectContext(root_pid=pid, job_pids=self._job_pids)
        collectors = self._start_collectors(ctx)
        self.store.write_run(self.run)
        self.store.start()
        run_id = self.run.run_id
        self.sampler = Sampler(
            collectors,
            self.config.interval,
            hub=self.hub,
            sinks=[lambda now, batches: self.store.submit(run_id, batches)],
        )
        for message in self._notices:
            self.sampler.note(*message[:2], **message[2])
        self.context = self.build_context()
        for consumer in self._build_consumers():
            try:
                consumer.start(self.context)
                self.consumers.append(consumer)
            except AccelwatchError:
                self.finish()
                raise
        self.sampler.start()
        return self.run

    def _start_collectors(self, ctx: CollectContext) -> list[Collector]:
        assert self.process_collector is not None
        try:
            candidates, notices = candidate_collectors(self.process_collector)
            started, start_notices = start_collectors(candidates, ctx)
        except TargetError:
            self.store.close()
            raise
        self._notices.extend(quiet_absent_accelerators(started, notices + start_notices))
        return started

    def build_context(self) -> LiveContext:
        """The consumers' narrow view of the started run."""
        assert self.run is not None
        sampler, store = self.sampler, self.store
        context = LiveContext(
            self.run,
            self.hub,
            note=sampler.note if sampler else lambda *_a, **_k: None,
            open_cursor=store.cursor,
            recording_health=lambda: _recording_health(store),
            sampler_cpu_seconds=(lambda: sampler.stats.cpu_seconds) if sampler else None,
        )
        context.startup_notices = MappingProxyType(self.startup_notices)
        return context

    def _build_consumers(self) -> list[Consumer]:
        from agent.readserver import ReadServer

        # First in, last stopped: readers reach the run over its socket until the end.
        consumers: list[Consumer] = [ReadServer(self.store.path)]
        if self.config.otlp is not None or self.config.prometheus is not None:
            from exporters import build_exporters

            consumers.extend(build_exporters(self.config))
        if self.config.live_analysis:
            try:
                from agent.analysis.live import LiveAnalysis
            except ImportError:
                pass
            else:
                consumers.append(LiveAnalysis())
        return consumers

    @property
    def startup_notices(self) -> dict[str, str]:
        """Sources that did not start (unavailable or broken): source → reason, for viewers."""
        return {
            source: str(detail.get("reason", kind))
            for kind, source, detail in self._notices
            if kind != ABSENT
        }

    # -- running
    def target_alive(self) -> bool:
        if self.child is not None:
            return self.child.poll() is None
        return bool(
            self.process_collector
            and self.process_collector.root_alive
            and _pid_running(self.run.pid if self.run else None)
        )

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop_requested.set()

    def note_signal(self, name: str) -> None:
        if self.sampler is not None:
            self.sampler.note("signal", "agent", signal=name)

    def forward_signal(self, signum: int) -> None:
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signum)

    def wait(self, on_tick: Callable[[], None] | None = None) -> None:
        """Block until the target exits, the duration passes, or a stop is requested."""
        deadline = time.monotonic() + self.config.duration if self.config.duration else None
        while True:
            if not self.target_alive():
                self.request_stop("target exited")
            if deadline is not None and time.monotonic() >= deadline:
                self.request_stop("duration reached")
            if self.stop_requested.wait(min(self.config.interval, 0.25)):
                break
            if on_tick is not None:
                on_tick()

    def finish(self) -> RunInfo | None:
        """Stop sampling, flush, mark the run ended; safe to call twice."""
        if self._finished:
            return self.run
        self._finished = True
        if self.sampler is not None:
            self.sampler.stop()
            if self.run is not None:
                self.sampler.step()  # one last sample so the end of the run is recorded
        for consumer in reversed(self.consumers):
            with contextlib.suppress(Exception):
                consumer.stop()
        if self.child is not None:
            _reap(self.child)
            if self.run is not None:
                self.run.exit_code = _exit_code(self.child.returncode)
        if self.run is not None:
            self.run.ended = time.time()
            self.run.status = "finished" if self.stop_reason == "target exited" else "stopped"
            self.store.close_writer()
            if self.store.lost_ticks:
                self.run.status = "incomplete"  # a store failure cost ticks; run_end counts them
            stats = self.sampler.stats_view() if self.sampler else {}
            end = Event(
                self.run.ended,
                "run_end",
                "agent",
                {
                    "reason": self.stop_reason or "finished",
                    **stats,
                    "rows_written": self.store.rows_written,
                    "dropped_ticks": self.store.dropped_ticks,
                    "lost_ticks": self.store.lost_ticks,
                    "store_failures": self.store.failures,
                },
            )
            self.store.finalize(self.run, [end])  # never raises; says so on stderr
        self.store.close()
        if self.simulator is not None:
            self.simulator.uninstall()
        return self.run


def _recording_health(store: Store) -> dict[str, Any]:
    health: dict[str, Any] = {"samples": store.rows_written, "dropped_ticks": store.dropped_ticks}
    if store.last_error:
        health["store_error"] = store.last_error
    health.update(store.health())
    return health


class SessionControl:
    """The :class:`RecordingControl` a live viewer gets: wait for the end, ask to stop."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def wait_end(self) -> str:
        self._session.wait()
        return self._session.stop_reason or "stopped"

    def stop(self, reason: str) -> None:
        self._session.request_stop(reason)

    def stopping(self) -> bool:
        return self._session.stop_requested.is_set()

    def target_exit_code(self) -> int | None:
        child = self._session.child
        if child is None or child.poll() is None:
            return None
        return _exit_code(child.returncode)


def _reap(child: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Wait for a launched command; kill it if it outlives the grace period after a stop."""
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _exit_code(returncode: int | None) -> int | None:
    """A shell-style exit code: 128 + N when the command died of signal N."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


def _pid_running(pid: int | None) -> bool:
    if pid is None:
        return False
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _default_name(cmdline: list[str], pid: int) -> str:
    for part in cmdline:
        base = os.path.basename(part)
        if base.endswith(".py") or (base and not base.startswith(("python", "-"))):
            return base
    return f"pid{pid}"


def install_signal_handlers(session: Session) -> None:
    """SIGINT/SIGTERM: forward to a launched command, stop recording, finalize cleanly."""

    received: list[int] = []

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        session.note_signal(name)
        if session.child is not None and not received:
            session.forward_signal(signum)  # the command decides; we record until it exits
        else:
            session.request_stop(f"signal {name}")
        received.append(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if sys.platform != "win32":
        signal.signal(signal.SIGHUP, handler)
