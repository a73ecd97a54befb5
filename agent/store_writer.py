"""The store's writer: a thread that flushes ticks, survives a full disk or an invalidated
database, and keeps the run's heartbeat.

A failed flush keeps its ticks in a bounded buffer and is retried with backoff; a DuckDB
instance invalidated by a fatal error (a checkpoint that hit ENOSPC or OutOfMemory) is closed
and reopened, which replays the WAL, so what was committed stays readable. Nothing here
raises into the sampler or the session's finalization.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import duckdb

from agent.model import Batch, Event, RunInfo
from agent.series import SeriesIds
from agent.store import (
    AGENT_DB_CHECKPOINT_BYTES,
    AGENT_DB_MEMORY,
    DEFAULT_FLUSH_INTERVAL,
    MAX_FLUSH_INTERVAL,
    _first_line,
    close_writable,
    connect,
    this_host,
)
from agent.store_flush import (
    flush_connection,
    newest_sample,
    plan_batches,
    run_steps,
    write_heartbeat,
)
from agent.store_memory import memory_limit_text, release_file_cache
from agent.store_rewrite import finish_into_fresh, rewrite_if_worth_it
from agent.store_rows import (
    _reason,
    _stderr_line,
    insert_events,
    insert_run,
)
from agent.store_spans import Compactor

Tick = tuple[str, list[Batch]]
#: Longest wait between two write attempts while the store fails.
RETRY_MAX_S = 8.0
#: How long closing keeps retrying ticks that are still buffered (a full disk at the end).
CLOSE_RETRY_S = 2.0
#: The heartbeat (``run_heartbeat``: heartbeat, last_sample) is written at most this often,
#: and at the run's end; readers call a run whose heartbeat is older than
#: :data:`agent.store.HEARTBEAT_STALE_S` (10 s) lost, so it stays fresh with a 2 s flush.
HEARTBEAT_EVERY_S = 4.0
#: After a flush, the writer's thread moves rows into spans for at most this long (one chunk
#: at least), so the next flush is never held up by more than one chunk.
COMPACT_SLICE_S = 0.2
#: After a failed move into spans, the next try waits this long (the rows stay where they are).
COMPACT_RETRY_S = 30.0


class Store:
    """Owns the write connection; ``submit`` never blocks the sampler.

    Batches go through a bounded queue to a writer thread that inserts them with
    ``INSERT ... SELECT`` at least every ``flush_interval`` seconds, so ``kill -9`` of the
    agent loses at most that much. While writes fail, up to ``max_pending_ticks`` ticks wait
    in the writer's buffer (and as many in the queue); beyond that the oldest tick is dropped
    and counted (``dropped_ticks``), so memory stays bounded whatever the disk does. The first
    failure and the recovery are each one line through ``report`` (stderr by default).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_pending_ticks: int = 300,
        report: Callable[[str], None] = _stderr_line,
    ) -> None:
        if not 0 < flush_interval <= MAX_FLUSH_INTERVAL:
            raise ValueError(f"flush_interval must be in (0, {MAX_FLUSH_INTERVAL}]")
        self.path = Path(path)
        self.con = connect(self.path)
        self._flush_con = flush_connection(self.con)
        self._memory_shown = memory_limit_text(self.con)
        self.flush_interval = flush_interval
        self.max_pending_ticks = max_pending_ticks
        self.agent_host = this_host()
        self.agent_pid = os.getpid()
        self._report = report
        self._queue: queue.Queue[Tick | None] = queue.Queue(max_pending_ticks)
        self._wake = threading.Event()  # set by close_writer: flush now and stop
        self._pending: deque[Tick] = deque()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.RLock()
        self._needs_reopen = False
        self._series = SeriesIds()
        self._spans = Compactor()
        #: Whether the writer's thread runs (it then moves rows into spans between flushes;
        #: without it, ``write_ticks`` does so before it returns).
        self._background = False
        self._compact_retry_at = 0.0
        self.compact_failures = 0
        self._closed = False
        #: Per run: when the heartbeat was last committed (monotonic), and the newest sample
        #: time committed since (what the next beat writes as ``last_sample``).
        self._beat_at: dict[str, float] = {}
        self._last_sample: dict[str, float] = {}
        self._beaten: set[str] = set()
        #: Runs whose newest committed sample is newer than their heartbeat's last_sample.
        self._beat_behind: set[str] = set()
        self._clock: Callable[[], float] = time.monotonic  # tests drive it
        self.rows_written = 0
        self.flushes = 0
        self.wakeups = 0  # of the writer's thread: about one a flush
        self.dropped_ticks = 0
        #: Ticks still unwritten when the writer stopped (the disk never came back).
        self.abandoned_ticks = 0
        self.failures = 0
        self.reopens = 0
        self.cache_release_failures = 0
        #: Bumped on every reopen: cursors from an older generation are dead.
        self.generation = 0
        self.last_error: str | None = None
        self._failing: str | None = None

    # -- health
    @property
    def lost_ticks(self) -> int:
        """Ticks that never reached the database (dropped while buffering, or abandoned)."""
        return self.dropped_ticks + self.abandoned_ticks

    @property
    def buffered_ticks(self) -> int:
        return len(self._pending) + self._queue.qsize()

    @property
    def state(self) -> str:
        """``ok``, or what is wrong: ``disk full: 12 ticks buffered, 0 dropped``."""
        if self._failing is None:
            return "ok"
        return f"{self._failing}: {self.buffered_ticks} ticks buffered, {self.lost_ticks} dropped"

    def health(self) -> dict[str, Any]:
        """The store's counters for the UI header, the live line and ``run_end``."""
        health: dict[str, Any] = {
            "store.state": self.state,
            "store.buffered_ticks": self.buffered_ticks,
            "store.lost_ticks": self.lost_ticks,
            "store.failures": self.failures,
            "store.reopens": self.reopens,
        }
        if self.cache_release_failures:
            health["store.cache_release_failures"] = self.cache_release_failures
        if self.last_error:
            health["store.last_error"] = self.last_error
        return health

    # -- runs
    def write_run(self, run: RunInfo) -> None:
        """Append the run's current state; the ``runs`` view shows the latest per run."""
        with self._write_lock:
            insert_run(self.con, run, self.agent_host, self.agent_pid, self.lost_ticks)

    def finalize(self, run: RunInfo, events: list[Event]) -> bool:
        """Write the run's last events and state, reopening once if needed; never raises.

        Returns False (after one stderr line) when the database could not take them: the run
        then stays ``running`` in the file and readers show it ``lost`` once its heartbeat
        is stale."""
        for attempt in range(2):
            try:
                if self._needs_reopen or attempt:
                    self._reopen()
                with self._write_lock:
                    self.con.begin()
                    try:
                        insert_events(self.con, run.run_id, events)
                        self.write_run(run)
                        self._beat(run.run_id, [])
                        self.con.commit()
                    except BaseException:
                        self._beaten.clear()
                        with contextlib.suppress(duckdb.Error):
                            self.con.rollback()
                        raise
                self._committed_beats(self._clock())
                return True
            except Exception as exc:
                self._note_failure(exc)
        self._report(f"could not finalize run {run.run_id} in {self.path}: {self.last_error}")
        return False

    # -- samples
    def start(self) -> None:
        self._background = True
        self._thread = threading.Thread(
            target=self._writer_loop, name="accelwatch-store", daemon=True
        )
        self._thread.start()

    def submit(self, run_id: str, batches: list[Batch]) -> None:
        """Queue one tick for writing; drop the oldest tick if the writer is behind."""
        while True:
            try:
                self._queue.put_nowait((run_id, batches))
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped_ticks += 1
                except queue.Empty:
                    pass

    def _writer_loop(self) -> None:
        """Sleep until the flush is due, then take every queued tick: a tick queued in between
        wakes nobody (one wake-up a flush, not one a tick); ``close_writer`` wakes it early."""
        deadline = time.monotonic() + self.flush_interval
        retry_at = 0.0
        backoff = 0.0
        stopping = False
        while not stopping:
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            self.wakeups += 1
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                self._pending.append(item)
                while len(self._pending) > self.max_pending_ticks:
                    self._pending.popleft()
                    self.dropped_ticks += 1
            now = time.monotonic()
            if not stopping and now < deadline:
                continue
            deadline = now + self.flush_interval
            if self._pending and (stopping or now >= retry_at):
                if self._flush_pending():
                    backoff = 0.0
                else:
                    backoff = min(RETRY_MAX_S, max(self.flush_interval, backoff * 2))
                    retry_at = now + backoff
            if not stopping and not self._failing:
                self.compact(budget_s=COMPACT_SLICE_S)
        end = time.monotonic() + CLOSE_RETRY_S
        while self._pending and time.monotonic() < end:
            time.sleep(min(0.25, self.flush_interval))
            self._flush_pending()
        if self._pending:
            self.abandoned_ticks += len(self._pending)
            self._report(f"{len(self._pending)} ticks could not be written to {self.path}")
            self._pending.clear()

    def _flush_pending(self) -> bool:
        try:
            if self._needs_reopen:
                self._reopen()
            self.write_ticks(list(self._pending))
        except Exception as exc:  # keep sampling; say it once, count every attempt
            self._note_failure(exc)
            return False
        self._pending.clear()
        if self._failing is not None and not self._needs_reopen:
            self._report(f"writing to {self.path} again ({self.lost_ticks} ticks dropped)")
            self._failing = None
        return True

    def _note_failure(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {_first_line(exc)}"
        if isinstance(exc, duckdb.FatalException) or "invalidated" in str(exc):
            self._needs_reopen = True
        reason = _reason(exc)
        if self._failing is None:
            self._failing = reason
            self._report(
                f"cannot write to {self.path}: {reason} ({_first_line(exc)}); keeping up to "
                f"{self.max_pending_ticks} ticks and retrying"
            )
        self._failing = reason

    def _reopen(self) -> None:
        """Replace an invalidated instance: reopening replays the WAL (what was committed)."""
        with self._write_lock:
            with contextlib.suppress(Exception):
                self._flush_con.close()
            with contextlib.suppress(Exception):
                self.con.close()
            self.con = connect(self.path)
            self._flush_con = flush_connection(self.con)
            self._series.reset()
            self._spans.reset()
            self._needs_reopen = False
            self.reopens += 1
            self.generation += 1

    def _maybe_checkpoint(self) -> None:
        if self._spans.moving:
            return  # the move checkpoints when it is done
        wal = self.path.with_name(self.path.name + ".wal")
        try:
            if wal.stat().st_size < AGENT_DB_CHECKPOINT_BYTES:
                return
        except OSError:
            return
        try:
            with self._write_lock:
                self.con.execute("CHECKPOINT")
        except duckdb.TransactionException:
            return  # another thread's write transaction is open: checkpoint after the next flush
        except Exception as exc:  # committed rows are in the WAL; reopening replays them
            self._note_failure(exc)
            return
        self._release_cache()

    def _release_cache(self) -> None:
        """After a checkpoint, give back DuckDB's cache of file blocks (store_memory.py)."""
        try:
            with self._write_lock:
                release_file_cache(self.con, AGENT_DB_MEMORY, self._memory_shown)
        except Exception as exc:  # the cache stays; recording goes on
            self.cache_release_failures += 1
            if self.cache_release_failures == 1:
                self._report(f"cannot release DuckDB's block cache: {_first_line(exc)}")

    def write_ticks(self, ticks: Iterable[Tick], *, beat: bool = False) -> int:
        """Write ticks now (also used directly by tests and importers). Returns rows written.

        DuckDB's cost is per statement and per commit, hardly per row: a flush that only
        appends samples is one autocommitted ``INSERT``; new series, events, entity attributes,
        the training client's records and the heartbeat (every :data:`HEARTBEAT_EVERY_S`, or
        ``beat``) join it in one transaction."""
        by_run: dict[str, list[Batch]] = {}
        n_ticks = 0
        for run_id, batches in ticks:
            by_run.setdefault(run_id, []).extend(batches)
            n_ticks += 1
        total = 0
        now = self._clock()
        beats: dict[str, float] = {}
        with self._write_lock:
            con = self._flush_con
            steps: list[Callable[[], object]] = []
            try:
                for run_id, batches in by_run.items():
                    total += plan_batches(con, self._series, run_id, batches, steps)
                    last = max((b.ts for b in batches if len(b.values)), default=None)
                    if last is not None:
                        beats[run_id] = max(last, self._last_sample.get(run_id, last))
                    beat_at = self._beat_at.get(run_id)
                    if beat or beat_at is None or now - beat_at >= HEARTBEAT_EVERY_S:
                        steps.append(functools.partial(self._beat, run_id, batches, con))
                run_steps(con, steps)
            except BaseException as exc:
                if "commit succeeded and is durable" in str(exc).lower():
                    self._needs_reopen = True  # written; only the auto-checkpoint failed
                else:
                    self._series.rollback()
                    self._beaten.clear()
                    raise
            self._series.commit()
            self._last_sample.update(beats)
            self._beat_behind.update(beats)
            self._committed_beats(now)
        self.rows_written += total
        self.flushes += 1
        self._spans.note_ticks(n_ticks)
        self._maybe_checkpoint()
        if not self._background:
            self.compact()
        return total

    def compact(
        self, appended_ticks: int = 0, budget_s: float | None = None, *, finish: bool = False
    ) -> None:
        """Move rows into spans for about ``budget_s`` (None: until nothing is due; ``finish``:
        everything), counting ``appended_ticks`` a bulk load appended to ``sample_recent``
        itself (a benchmark's generator). Never raises: a failure is one line, the rows stay
        where they are and the move is tried again later."""
        self._spans.note_ticks(appended_ticks)
        if self._needs_reopen or (time.monotonic() < self._compact_retry_at and not finish):
            return
        try:
            with self._write_lock:
                if finish:
                    self._spans.finish(self.con)
                else:
                    self._spans.run(self.con, budget_s)
        except Exception as exc:
            self._compact_failed(exc)

    def _compact_failed(self, exc: BaseException) -> None:
        self.compact_failures += 1
        self._compact_retry_at = time.monotonic() + COMPACT_RETRY_S
        if isinstance(exc, duckdb.FatalException) or "invalidated" in str(exc):
            self._needs_reopen = True
        if self.compact_failures == 1:
            self._report(
                f"cannot move samples into spans in {self.path}: {_reason(exc)} "
                f"({_first_line(exc)}); they stay readable where they are, retrying"
            )

    def _committed_beats(self, now: float) -> None:
        for run_id in self._beaten:
            self._beat_at[run_id] = now
            self._beat_behind.discard(run_id)
        self._beaten.clear()

    def _catch_up_beats(self) -> None:
        """At the end, bring every run's heartbeat up to its last committed sample."""
        if not self._beat_behind or self._needs_reopen:
            return
        with self._write_lock:
            try:
                self.con.begin()
                for run_id in sorted(self._beat_behind):
                    self._beat(run_id, [])
                self.con.commit()
            except Exception as exc:
                with contextlib.suppress(duckdb.Error):
                    self.con.rollback()
                self._beaten.clear()
                self._note_failure(exc)
                return
            self._committed_beats(self._clock())

    def _beat(
        self, run_id: str, batches: list[Batch], con: duckdb.DuckDBPyConnection | None = None
    ) -> None:
        """Append the run's heartbeat on ``con`` (the caller's transaction; default the store's
        connection): every :data:`HEARTBEAT_EVERY_S` (a statement costs as much as the
        samples' ``INSERT``), so ``last_sample`` in ``runs`` trails a live run by at most that;
        a lost run's last sample is read from its samples."""
        last = newest_sample(batches, self._last_sample.get(run_id))
        write_heartbeat(self.con if con is None else con, run_id, last)
        self._beaten.add(run_id)

    def write_events(self, run_id: str, events: list[Event]) -> None:
        """Write events now, outside the tick queue (run start/end, agent warnings)."""
        with self._write_lock:
            insert_events(self.con, run_id, events)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for another thread (TUI history, live analysis) on the same database.

        After a reopen (``generation`` changed) older cursors fail; ask for a new one."""
        with self._write_lock:
            return self.con.cursor()

    def close_writer(self) -> None:
        """Flush everything queued and stop the writer thread; the connection stays open."""
        if self._thread is not None:
            self._queue.put(None)
            self._wake.set()
            self._thread.join()
            self._thread = None
        self._catch_up_beats()

    def close(self) -> None:
        """Flush everything queued, stop the writer, move the rest into spans, checkpoint and
        close; never raises, and closing again does nothing. A small file is written afresh
        with the rest sorted straight into its spans (:func:`finish_into_fresh`); otherwise
        the rest is moved in place, and the file copied when that left it mostly free."""
        if self._closed:
            return
        self._closed = True
        self.close_writer()
        with self._write_lock:
            fresh = self._fresh_at_close()
            if fresh is not True:
                self.compact(finish=True)
                with contextlib.suppress(Exception):
                    self.con.execute("CHECKPOINT")
                    if fresh is None and not self.compact_failures:
                        try:
                            rewrite_if_worth_it(self.con, self.path)
                        except Exception as exc:
                            self._report(
                                f"could not rewrite {self.path} smaller: {_first_line(exc)}"
                            )
            with contextlib.suppress(Exception):
                self._flush_con.close()  # a cursor left open would keep the file open
            with contextlib.suppress(Exception):
                close_writable(self.con, self.path)

    def _fresh_at_close(self) -> bool | None:
        """Whether the file was written afresh at close (None: not tried). A failure is one
        line and False: the caller then moves the rows in place (nothing was changed) and
        tries no copy of its own."""
        if self._needs_reopen or self.compact_failures or self._spans.moving:
            return None
        try:
            return finish_into_fresh(self.con, self.path) or None
        except Exception as exc:
            self._report(f"could not rewrite {self.path} smaller: {_first_line(exc)}")
            return False
