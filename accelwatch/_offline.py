"""``ACCELWATCH_MODE=offline``: record in this process into a local DuckDB file.

The run is written as a recording agent would write it (mode ``offline``, the ``steps`` source
and the tracking tables), so ``accelwatch runs`` and ``report`` read it back. Calls only append
to a bounded queue; a daemon thread opens the database (DuckDB and NumPy are imported there,
never on ``import accelwatch``) and writes once a second. Its files are private (0600): the
process umask is 0077 only while it creates or writes them, and the job's own umask otherwise.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

#: Datagrams (header + messages) waiting for the writer; beyond, the oldest are dropped.
MAX_QUEUED = 4096
WRITE_INTERVAL_S = 1.0
DEFAULT_DB = "accelwatch.duckdb"

_umask_lock = threading.Lock()


@contextlib.contextmanager
def _private_files() -> Iterator[None]:
    with _umask_lock:
        old = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(old)


def offline_db_path(environ: Mapping[str, str], rank: int | None) -> str:
    """``$ACCELWATCH_DB`` (``{rank}`` in it is replaced), else ./accelwatch.duckdb for rank 0
    and ./accelwatch-rank<N>.duckdb for the others (one writer per file)."""
    named = environ.get("ACCELWATCH_DB")
    if named:
        return named.replace("{rank}", str(rank or 0))
    return DEFAULT_DB if not rank else f"accelwatch-rank{rank}.duckdb"


class OfflineSink:
    """A sink for :class:`accelwatch._client.Client` that records instead of sending."""

    def __init__(
        self, environ: Mapping[str, str], flush: Callable[[], None] = lambda: None
    ) -> None:
        from accelwatch._client import _int_env

        self._flush = flush
        self._closed = False
        self.path = offline_db_path(environ, _int_env(environ, "RANK", "SLURM_PROCID"))
        self.sent = 0
        self.dropped = 0
        self.errors: dict[str, int] = {}
        self.run_id: str | None = None
        self._queue: deque[tuple[dict[str, Any], list[Any]]] = deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="accelwatch-offline", daemon=True)
        self._thread.start()
        _before_interpreter_exit(self._at_exit)

    # -- the client's side
    def send(
        self, header: dict[str, Any], messages: list[Any], now: float, limit: int | None = None
    ) -> None:
        if not messages:
            return
        with self._lock:
            self._queue.append((dict(header), messages))
            self._queued += len(messages)
            while self._queued > MAX_QUEUED * 64 and self._queue:
                _, old = self._queue.popleft()
                self._queued -= len(old)
                self.dropped += len(old)

    def given_up(self, now: float) -> bool:
        return False

    def finish(self) -> None:
        """The script called ``finish()``: write everything and end the run."""
        self.close()

    def _at_exit(self) -> None:
        """Write what the script logged last, before DuckDB's own exit hook refuses to."""
        if not self._closed:
            self._flush()
            self.close()

    def close(self) -> int:
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(10.0)
        return 0

    # -- the writer thread
    def _run(self) -> None:
        store = None
        try:
            store, run = self._open()
        except Exception as exc:
            self.errors[type(exc).__name__] = 1
            _say(f"offline mode cannot record into {self.path}: {exc}; nothing is recorded")
            with self._lock:
                self.dropped += self._queued
                self._queue.clear()
            self._ready.set()
            return
        self._ready.set()
        # After duckdb's import: our hook runs before the one that stops DuckDB at exit.
        atexit.register(self._at_exit)
        from agent.model import Event
        from agent.tracking.aggregate import Aggregator
        from agent.tracking.collector import tick_batch

        aggregator = Aggregator()
        host = socket.gethostname()
        try:
            while True:
                stopping = self._stop.wait(WRITE_INTERVAL_S)
                self._write(store, run.run_id, aggregator, host, tick_batch)
                if stopping:
                    break
        finally:
            run.ended = time.time()
            run.status = "finished"
            end = Event(
                run.ended,
                "run_end",
                "agent",
                {"reason": "finished", **aggregator.counters.health()},
            )
            with _private_files():
                store.finalize(run, [end])
                store.close()

    def _open(self) -> tuple[Any, Any]:
        from agent.model import RunInfo
        from agent.store import Store
        from agent.target import allowed_env

        with _private_files():
            store = Store(self.path, report=_say)
        argv = list(sys.argv)
        name = os.path.basename(argv[0]) if argv and argv[0] else "python"
        run = RunInfo(
            run_id=f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}",
            name=name,
            pid=os.getpid(),
            cmdline=[sys.executable, *argv],
            cwd=os.getcwd(),
            host=socket.gethostname(),
            started=time.time(),
            interval=WRITE_INTERVAL_S,
            db_path=str(self.path),
            env=allowed_env(dict(os.environ)),
            mode="offline",
        )
        with _private_files():
            store.write_run(run)
        self.run_id = run.run_id
        return store, run

    def _write(self, store: Any, run_id: str, aggregator: Any, host: str, tick_batch: Any) -> None:
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            self._queued = 0
        now = time.time()
        for header, messages in queued:
            aggregator.feed({**header, "m": messages}, now)
            self.sent += len(messages)
        batch = tick_batch(aggregator.take(), now, host)
        try:
            with _private_files():
                store.write_ticks([(run_id, [batch])])
        except Exception as exc:  # a full disk costs the tick, never the job
            self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
            self.dropped += len(batch) + sum(len(r["ts"]) for r in batch.records.values())


def _before_interpreter_exit(hook: Any) -> None:
    """Run ``hook`` when the script's main thread ends, before any ``atexit`` hook.

    DuckDB stops running queries that touch Python objects once its own exit hook has run, and
    ``atexit`` order depends on when each hook was registered (DuckDB may register after us).
    ``threading``'s exit hooks run before all of them, as ``concurrent.futures`` relies on.
    """
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(hook)
            return
    except RuntimeError:  # the interpreter is already shutting down
        pass
    atexit.register(hook)


def _say(text: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(f"accelwatch: {text}\n")
