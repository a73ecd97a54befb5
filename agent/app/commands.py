"""Handlers behind each ``accelwatch`` subcommand."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.app.cli import LIVE_EVERY_IN_LOGS_S
from agent.app.job import DEFAULT_STOP_TIMEOUT_S, install_signal_handlers
from agent.app.session import Session, SessionConfig, SessionControl
from agent.catalog import CATALOG
from agent.errors import UsageError
from agent.health_text import HealthPhrase, ProblemWatch, health_phrases
from agent.model import RunInfo
from agent.registry import default_registry
from agent.snapshot import Snapshot


def _check_scenario(name: str) -> None:
    """Fail before anything is created, with the scenario error as a one-line usage error."""
    from agent.app.sources import check_scenario

    check_scenario(name)


def _config(args: argparse.Namespace) -> SessionConfig:
    if args.simulate:
        _check_scenario(args.simulate)
    return SessionConfig(
        db_path=args.db,
        interval=args.interval,
        name=args.name,
        tags=dict(args.tag),
        headless=args.headless or not sys.stdout.isatty(),
        live_every=getattr(args, "live_every", None),
        duration=getattr(args, "duration", None),
        simulate=args.simulate,
        otlp=args.otlp,
        prometheus=args.prometheus,
        metric_names=args.metric_names,
        stop_timeout=getattr(args, "stop_timeout", DEFAULT_STOP_TIMEOUT_S),
        sys_root=args.sys_root,
        proc_root=args.proc_root,
        source_options=_source_options(args),
    )


def _source_options(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Per-source command-line options, handed to collectors as ``CollectContext.options``."""
    options: dict[str, dict[str, str]] = {}
    if getattr(args, "tpu_runtime", None):
        options.setdefault("tpu", {})["runtime"] = args.tpu_runtime
    return options


def cmd_run(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("run needs a command: accelwatch run [OPTIONS] -- CMD ARGS...")
    config = _config(args)
    if not config.headless:
        config.job_log = job_log_path(config.db_path)
    session = Session(config)
    install_signal_handlers(session)
    session.launch(command)
    if config.job_log:
        session.note("job_log", "agent", path=config.job_log)
    _watch(session)
    if config.job_log and not session.terminal_lost:
        print(f"job output: {config.job_log}", file=sys.stderr)
    run = session.run
    return run.exit_code if run and run.exit_code is not None else 1


def job_log_path(db_path: str) -> str:
    """``<db stem>-job-<UTC time>.log`` beside the database: where a job's output goes under the TUI."""
    db = Path(db_path)
    return str(db.with_name(f"{db.stem}-job-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.log"))


def cmd_attach(args: argparse.Namespace) -> int:
    session = Session(_config(args))
    install_signal_handlers(session)
    session.attach(args.pid)
    _watch(session)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _check_scenario(args.scenario)
    args.simulate = args.scenario
    if args.name is None:
        args.name = f"demo-{Path(args.scenario).stem}"
    args.cmd = [sys.executable, str(example_script())]
    if args.steps is not None:
        args.cmd += ["--steps", str(args.steps)]
    else:  # long enough for every scenario to show its effect
        args.cmd += ["--steps", "1000000", "--duration", str(args.seconds)]
    return cmd_run(args)


def example_script() -> Path:
    """The example training job, from the installed wheel or the source tree."""
    packaged = Path(__file__).resolve().parents[1] / "_examples" / "train.py"
    if packaged.exists():
        return packaged
    return Path(__file__).resolve().parents[2] / "examples" / "train.py"


def _watch(session: Session) -> None:
    """Foreground part of a recording: the TUI, or headless live lines; then finalize."""
    try:
        if session.config.headless:
            printer = LiveLinePrinter(session)
            session.wait(on_tick=printer.maybe_print)
        else:
            from tui.live import run_live

            assert session.context is not None
            run_live(session.context, SessionControl(session), job=session.job)
            job = session.job
            if job is not None:  # a launched job is recorded until it exits, viewer or not
                session.resume_after_viewer()
                if job.running() and not job.hung_up.is_set():
                    print(
                        f"accelwatch: detached: recording pid {job.pid} until it exits"
                        + (
                            f"; its output goes to {session.config.job_log}" if session.pump else ""
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
                session.wait()
    finally:
        run = session.finish()
    if run is not None and not session.config.quiet and not session.terminal_lost:
        print_summary(session, run)


_DIGITS = re.compile(r"\d+")


class LiveLinePrinter:
    """The live line on stderr while recording headless: every tick on a terminal, else every
    :data:`LIVE_EVERY_IN_LOGS_S` (``--live-every``); a new fault's line, and a live line whose
    account of what is wrong changed (a fault came or went, not a count in it), at once."""

    def __init__(self, session: Session, *, terminal: bool | None = None) -> None:
        self.session = session
        self.last_seq = 0
        self.problems = ProblemWatch()
        every = session.config.live_every
        if every is None:
            on_terminal = sys.stderr.isatty() if terminal is None else terminal
            every = 0.0 if on_terminal else LIVE_EVERY_IN_LOGS_S
        self.every = every
        self._printed_at: float | None = None
        self._wrong: tuple[str, ...] = ()

    def maybe_print(self) -> None:
        snap = self.session.hub.latest
        if snap is None or snap.seq == self.last_seq:
            return
        self.last_seq = snap.seq
        health = self.session.context.health if self.session.context else {}
        for problem in self.problems.new_problems(health):  # once per fault, at once
            print(f"accelwatch: {problem} (recording continues)", file=sys.stderr, flush=True)
        phrases = health_phrases(health) if health else []
        # what is wrong, its counts aside (a disk-full line counts its buffered ticks)
        wrong = tuple(_DIGITS.sub("#", p.text) for p in phrases)
        # the wall clock may step back (NTP, a restored VM): a tick before the last line is due
        since = None if self._printed_at is None else snap.ts - self._printed_at
        due = since is None or since < 0 or since >= self.every - 1e-6
        if not due and wrong == self._wrong:
            return
        self._printed_at, self._wrong = snap.ts, wrong
        print(format_live_line(snap, phrases=phrases), file=sys.stderr, flush=True)


def format_live_line(
    snap: Snapshot,
    health: Mapping[str, Any] | None = None,
    *,
    phrases: list[HealthPhrase] | None = None,
) -> str:
    """``12:00:01 procs=3 cpu=95% rss=812MiB host=40% gpu0=91% dev0=–``: the job, the host, each
    accelerator's busy share (entities of kind accelerator, whatever their source), then what
    is wrong in words (``OTLP export: collector down: 127.0.0.1:4317, 2 failed exports``):
    ``health``'s phrases, or ``phrases`` when the caller has them already."""
    procs = snap.entities("process")
    cpu = sum(snap.value(p, "process.cpu.utilization") or 0.0 for p in procs)
    rss = sum(snap.value(p, "process.memory.rss") or 0.0 for p in procs)
    parts = [
        time.strftime("%H:%M:%S", time.localtime(snap.ts)),
        f"procs={len(procs)}",
        f"cpu={cpu * 100:.0f}%",
        f"rss={rss / 2**20:.0f}MiB",
    ]
    host_cpu = snap.value("host", "host.cpu.utilization")
    if host_cpu is not None:
        parts.append(f"host={host_cpu * 100:.0f}%")
    shown = 0
    for source in dict.fromkeys(b.source for b in snap.batches):
        accelerators, metric = _accelerator_source(source)
        if not accelerators:  # a source with no accelerator kind: its entities are not read
            continue
        for entity in _accelerators_of(snap, source)[: 8 - shown]:
            shown += 1
            util = snap.value(entity, metric) if metric else None
            parts.append(f"{entity}={'-' if util is None else f'{util * 100:.0f}%'}")
    disabled = snap.stats.get("disabled") or {}
    if disabled:
        parts.append(f"disabled={','.join(disabled)}")
    for phrase in health_phrases(health or {}) if phrases is None else phrases:
        parts.append(f"· {phrase.text}")
    return " ".join(parts)


_ACCELERATOR_SOURCES: dict[str, tuple[object, bool, str | None]] = {}
#: Per source: the entities the snapshot gave (kept while the sources' columns stay the same)
#: and which of them are accelerators, so the line asks the registry once per shape.
_ACCELERATORS_SEEN: dict[str, tuple[tuple[str, ...], list[str]]] = {}


def _accelerators_of(snap: Snapshot, source: str) -> list[str]:
    entities = snap.entities(source)
    seen = _ACCELERATORS_SEEN.get(source)
    if seen is None or seen[0] is not entities:
        registry = default_registry()
        found = [e for e in entities if registry.kind_of(source, e) == "accelerator"]
        seen = _ACCELERATORS_SEEN[source] = (entities, found)
    return seen[1]


def _accelerator_source(source: str) -> tuple[bool, str | None]:
    """(whether ``source`` declares an accelerator kind, its ``accelerator.busy`` metric),
    worked out once per registered spec: the live line runs every tick over every batch."""
    spec = default_registry().get(source)
    known = _ACCELERATOR_SOURCES.get(source)
    if known is None or known[0] is not spec:
        kinds = spec.entity_kinds if spec is not None else ()
        metric = next(
            (m.name for m in CATALOG.by_role("accelerator.busy") if m.source == source), None
        )
        known = (spec, any(k.kind == "accelerator" for k in kinds), metric)
        _ACCELERATOR_SOURCES[source] = known
    return known[1], known[2]


def print_summary(session: Session, run: RunInfo) -> None:
    """The finished run's report; a one-line summary if the report cannot be made."""
    try:
        from agent.report import render_run_text
    except ImportError:
        pass
    else:
        try:
            print(render_run_text(session.store.path, run.run_id))
            return
        except Exception as exc:  # the recording is safe; say why the report failed
            print(f"accelwatch: report failed: {exc}", file=sys.stderr)
    duration = (run.ended or time.time()) - run.started
    print(
        f"run {run.run_id} ({run.name}) {run.status}: {duration:.1f}s, "
        f"{session.store.rows_written} samples in {session.store.path}"
        + (f", exit code {run.exit_code}" if run.exit_code is not None else "")
    )
