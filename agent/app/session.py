"""A recording session: target + collectors + sampler + store + consumers, from start to finalize.

Consumers (exporters, live analysis, the TUI) plug in through :class:`Consumer` and only read
the :class:`agent.snapshot.SnapshotHub`; nothing they do can block sampling.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.app.job import (
    DEFAULT_STOP_TIMEOUT_S,
    JobSignals,
    OutputPump,
    client_socket,
    exit_code,
    launch_job,
)
from agent.app.os_process import limit_malloc_arenas, name_os_threads, pid_running
from agent.app.resident import RELEASE_EVERY_S, release_later
from agent.app.session_health import collector_health, recording_health
from agent.app.session_wait import EndWatch, wait_for_end
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
from agent.store import DEFAULT_FLUSH_INTERVAL, Store
from agent.target import allowed_env, resolve_target, target_cmdline, target_cwd, target_env
from agent.tracking.receiver import release_early
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
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    live_analysis: bool = True
    quiet: bool = False
    #: Headless: the live line's period in seconds (None: every tick on a terminal, else
    #: :data:`agent.app.cli.LIVE_EVERY_IN_LOGS_S`).
    live_every: float | None = None
    #: Where a launched command's stdout/stderr go (None: the agent's own terminal). The TUI
    #: owns the terminal, so under it the job's output goes through a pipe into this file.
    job_log: str | None = None
    #: Seconds after the first stop signal before a further request may SIGKILL the job.
    stop_timeout: float = DEFAULT_STOP_TIMEOUT_S
    #: Injected roots (``--sys-root`` / ``--proc-root``) and per-source options, handed to
    #: every collector through :class:`CollectContext`.
    sys_root: str = "/sys"
    proc_root: str = "/proc"
    source_options: dict[str, dict[str, str]] = field(default_factory=dict)


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class Session:
    """Owns one run. Use :meth:`attach` or :meth:`launch`, then :meth:`wait`, then :meth:`finish`."""

    def __init__(self, config: SessionConfig) -> None:
        limit_malloc_arenas()  # before the store's and the sampler's threads allocate
        self.config = config
        #: A database file this session created: removed again if the start fails before any
        #: run is written (a failed start leaves nothing behind).
        self._created_db = not os.path.exists(config.db_path)
        self.store = Store(config.db_path, flush_interval=config.flush_interval)
        self.hub = SnapshotHub()
        self.child: subprocess.Popen[bytes] | None = None
        self.run: RunInfo | None = None
        self.sampler: Sampler | None = None
        self.consumers: list[Consumer] = []
        self.stop_requested = threading.Event()
        #: What ``wait`` sleeps on (the target's pidfd and a bell), made when recording starts.
        self._end_watch: EndWatch | None = None
        #: Stop requests so far: a wait ends on one even if it is withdrawn before it wakes.
        self.stop_requests = 0
        self.stop_reason = ""
        self.simulator: Simulators | None = None
        self.process_collector: ProcessCollector | None = None
        #: (kind, source, detail) of collectors that did not start, noted on the first tick.
        self._notices: list[tuple[str, str, dict]] = []
        #: The consumers' narrow view of this run (built once recording starts).
        self.context: LiveContext | None = None
        self._finished = False
        self._run_written = False
        #: The launched job's output drain (under the UI) and its stop escalation.
        self.pump: OutputPump | None = None
        self.job: JobSignals | None = None
        #: When the target was seen gone: the run's end is the job's, not ours.
        self.target_ended_at: float | None = None
        #: The terminal hung up (SIGHUP): nothing is printed any more, nobody would read it.
        self.terminal_lost = False
        #: Releases DuckDB's start-up code from the resident set once (:mod:`agent.app.resident`).
        self._release: threading.Timer | None = None
        #: The training client's socket, bound before the launched job starts (until taken over).
        self._early_socket: str | None = None

    # -- starting
    def launch(self, command: list[str]) -> RunInfo:
        """Validate every option and bind every endpoint, then start ``command`` and record it.

        Nothing that can fail on bad input happens after the job started: a failure before
        leaves no job and no database file behind.
        """
        self._install_simulator()
        pending = self._prepare_consumers()
        if self.config.job_log:
            self.pump = OutputPump(self.config.job_log, self.note)
        job_env = self._job_env()
        try:
            self.child = launch_job(command, self.pump, env=job_env)
        except OSError as exc:
            for consumer in pending:  # release what they bound; they never started
                with contextlib.suppress(Exception):
                    consumer.stop()
            self._abort_start()
            if self.config.job_log:
                with contextlib.suppress(OSError):
                    os.unlink(self.config.job_log)
            raise TargetError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
        finally:
            if self.pump is not None:
                self.pump.start()
        self.job = JobSignals(
            self.child,
            stop_timeout=self.config.stop_timeout,
            own_group=self.pump is not None,
            note=self.note,
        )
        self.job.log = self.config.job_log
        # What we launched is known without /proc, which a job that ends at once (or a loaded
        # machine) may take away before the run is begun.
        launched = (list(command), allowed_env({**os.environ, **job_env}), os.getcwd())
        return self._begin(self.child.pid, mode="run", pending=pending, launched=launched)

    def _job_env(self) -> dict[str, str]:
        """What the launched job gets on top of our environment: the training client's socket,
        bound now (the ``steps`` collector, told the same path, takes it over)."""
        self.config.source_options, self._early_socket, env = client_socket(
            self.config.source_options
        )
        return env

    def _release_early_socket(self) -> None:
        """The early-bound socket no ``steps`` collector took over (source off, failed start)."""
        if self._early_socket is not None:
            release_early(self._early_socket)
            self._early_socket = None

    def attach(self, pid: int) -> RunInfo:
        try:
            resolve_target(pid)
        except TargetError:
            self._abort_start()
            raise
        self._install_simulator()
        pending = self._prepare_consumers()
        return self._begin(pid, mode="attach", pending=pending)

    def _prepare_consumers(self) -> list[Consumer]:
        """Consumers built (options validated, sockets bound) before any job starts."""
        try:
            return self._build_consumers()
        except AccelwatchError:
            self._abort_start()
            raise

    def _abort_start(self) -> None:
        """Undo a start that failed before a run was written: close, remove what we created."""
        self._release_early_socket()
        self.store.close()
        if self.simulator is not None:
            self.simulator.uninstall()
            self.simulator = None
        if self._created_db and not self._run_written:
            for path in (self.config.db_path, self.config.db_path + ".wal"):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def note(self, kind: str, entity: str, **detail: Any) -> None:
        """An agent event, from any thread, before or after the sampler exists."""
        if self.sampler is not None:
            self.sampler.note(kind, entity, **detail)
        else:
            self._notices.append((kind, entity, detail))

    def _install_simulator(self) -> None:
        if self.config.simulate:
            try:
                self.simulator = install_simulators(self.config.simulate, self._device_owner_pids)
            except AccelwatchError:
                self._abort_start()
                raise

    def _device_owner_pids(self) -> list[int]:
        """The watched process while it lives (an exited process holds no device)."""
        root = self.run.pid if self.run is not None else None
        return [root] if root and root in self._job_pids() else []

    def _job_pids(self) -> frozenset[int]:
        return self.process_collector.pids if self.process_collector else frozenset()

    def _begin(
        self,
        pid: int,
        *,
        mode: str,
        pending: list[Consumer],
        launched: tuple[list[str], dict[str, str], str] | None = None,
    ) -> RunInfo:
        import psutil

        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self._abort_start()
            raise TargetError(f"process {pid} exited before recording started") from None
        if launched is not None:
            cmdline, env, cwd = launched
        else:
            cmdline, env, cwd = target_cmdline(proc), target_env(proc), target_cwd(proc)
        self.run = RunInfo(
            run_id=new_run_id(),
            name=self.config.name or _default_name(cmdline, pid),
            pid=pid,
            cmdline=cmdline,
            cwd=cwd,
            host=socket.gethostname(),
            started=time.time(),
            interval=self.config.interval,
            db_path=str(self.store.path),
            tags=dict(self.config.tags),
            env=env,
            mode=mode,
            simulated=self.config.simulate is not None,
            scenario=self.config.simulate,
        )
        # The watched tree is a live process: it is always read from the live /proc, while
        # --proc-root points the file-reading sources (mounts, device ownership) at a captured
        # tree, where the job's pid does not exist.
        self.process_collector = ProcessCollector(pid, proc_root="/proc")
        ctx = CollectContext(
            root_pid=pid,
            job_pids=self._job_pids,
            sys_root=self.config.sys_root,
            proc_root=self.config.proc_root,
            options=self.config.source_options,
        )
        collectors = self._start_collectors(ctx)
        self._release_early_socket()
        self.store.write_run(self.run)
        self._run_written = True
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
        for consumer in pending:
            try:
                consumer.start(self.context)
                self.consumers.append(consumer)
            except AccelwatchError as exc:
                if self.child is None:  # nothing started that a failure could hurt
                    self.finish()
                    raise
                # the job already runs: it goes on, recorded without this consumer
                self.sampler.note("consumer_failed", "agent", error=str(exc))
                print(f"accelwatch: warning: {exc}", file=sys.stderr)
        self.sampler.start()
        self._watch_end()
        name_os_threads()
        self._release = release_later(every_s=RELEASE_EVERY_S)
        return self.run

    def _start_collectors(self, ctx: CollectContext) -> list[Collector]:
        assert self.process_collector is not None
        try:
            candidates, notices = candidate_collectors(self.process_collector)
            started, start_notices = start_collectors(candidates, ctx)
        except TargetError:
            self._abort_start()
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
            recording_health=lambda: recording_health(store, self.pump, sampler),
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
        alive = self._target_alive()
        if not alive and self.target_ended_at is None:
            self.target_ended_at = time.time()
        return alive

    def _target_alive(self) -> bool:
        if self.child is not None:
            return self.child.poll() is None
        return bool(
            self.process_collector
            and self.process_collector.root_alive
            and pid_running(self.run.pid if self.run else None)
        )

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop_requested.set()
        self.stop_requests += 1
        if self._end_watch is not None:
            self._end_watch.ring()

    def note_signal(self, name: str) -> None:
        if self.sampler is not None:
            self.sampler.note("signal", "agent", signal=name)

    def resume_after_viewer(self) -> None:
        """A viewer closed while the launched job runs (detach, hangup): its stop request is
        withdrawn, recording goes on until the job exits (stopping the job is :attr:`job`'s
        escalation, never a side effect of closing a screen)."""
        self.stop_requested.clear()
        self.stop_reason = ""

    def wait(self, on_tick: Callable[[], None] | None = None) -> None:
        """Block until the target exits, the duration passes, or a stop is requested; with
        ``on_tick``, call it after each new tick. Sleeps on the target's pidfd and a bell that a
        stop request (and each tick, for ``on_tick``) rings (:mod:`agent.app.session_wait`)."""
        wait_for_end(self, self._watch_end(), on_tick)

    def _watch_end(self) -> EndWatch:
        if self._end_watch is None:
            pid = self.child.pid if self.child is not None else self.run.pid if self.run else None
            self._end_watch = EndWatch(pid)
        return self._end_watch

    def finish(self) -> RunInfo | None:
        """Stop sampling, flush, mark the run ended; safe to call twice.

        A launched job that still runs (the recording stopped on an error) is waited for,
        never killed: its exit code is the command's.
        """
        if self._finished:
            return self.run
        self._finished = True
        if self._release is not None:
            self._release.cancel()
        if self._end_watch is not None:  # a wait still sleeping returns
            self._end_watch.close()
        if self.child is not None and self.child.poll() is None:
            print(
                f"accelwatch: waiting for the job (pid {self.child.pid}) to exit; "
                "Ctrl-C sends it SIGINT",
                file=sys.stderr,
            )
            self.child.wait()
        if self.run is not None:
            self.target_alive()  # stamps the end if the target just went
            self.run.ended = self.target_ended_at or time.time()
        if self.sampler is not None:
            self.sampler.stop()
            if self.run is not None:
                for collector in self.sampler.collectors:  # what the job sent before it ended
                    with contextlib.suppress(Exception):
                        collector.settle()
                self.sampler.step()  # one last sample so the end of the run is recorded
            for collector in self.sampler.collectors:  # sockets removed, handles released
                with contextlib.suppress(Exception):
                    collector.close()
        for consumer in reversed(self.consumers):
            with contextlib.suppress(Exception):
                consumer.stop()
        if self.pump is not None:
            self.pump.join()
        if self.child is not None and self.run is not None:
            self.run.exit_code = exit_code(self.child.wait())
        if self.run is not None:
            self.run.status = "finished" if self.stop_reason == "target exited" else "stopped"
            self.store.close_writer()
            if self.store.lost_ticks:
                self.run.status = "incomplete"  # a store failure cost ticks; run_end counts them
            stats = self.sampler.stats_view() if self.sampler else {}
            end = Event(
                self.run.ended or time.time(),  # stamped above; the fallback only narrows
                "run_end",
                "agent",
                {
                    "reason": self.stop_reason or "finished",
                    **stats,
                    "rows_written": self.store.rows_written,
                    "dropped_ticks": self.store.dropped_ticks,
                    "lost_ticks": self.store.lost_ticks,
                    "store_failures": self.store.failures,
                    **(self.pump.health() if self.pump else {}),
                    **collector_health(self.sampler),
                },
            )
            self.store.finalize(self.run, [end])  # never raises; says so on stderr
        self.store.close()
        if self.simulator is not None:
            self.simulator.uninstall()
        return self.run


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
        return exit_code(child.returncode)


def _default_name(cmdline: list[str], pid: int) -> str:
    for part in cmdline:
        base = os.path.basename(part)
        if base.endswith(".py") or (base and not base.startswith(("python", "-"))):
            return base
    return f"pid{pid}"
