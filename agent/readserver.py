"""The recording agent serves read-only queries on ``<db>.sock``, so nothing locks readers out.

DuckDB lets one process open a file for writing and then no other process may open it at all,
not even read-only. So while an agent records, ``accelwatch runs/report/view/sql`` ask the
agent instead: a Unix socket beside the database, mode 0600 from its first byte (bound in a
private 0700 directory, then renamed into place), and each peer's uid checked with
``SO_PEERCRED``. Only one read statement per request is accepted, as DuckDB's own parser
classifies it (``SELECT``; ``EXPLAIN`` of a ``SELECT``); it runs on a cursor of the agent's
connection on its own thread, interrupted after :data:`QUERY_TIMEOUT_S`, inside a transaction
that is rolled back, with a bounded result. Nothing starts until a reader connects: an idle
server is one thread blocked in ``accept``.

Protocol: one JSON object per line each way. Request ``{"sql": ..., "params": [...]}``; reply
``{"ok": true, "columns": [...], "types": [...], "rows": [[...]...]}`` or
``{"ok": false, "error": "one line"}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    import duckdb

    from agent.context import LiveContext

#: A query running longer than this is interrupted (the recording comes first).
QUERY_TIMEOUT_S = 10.0
#: At most this many rows, and about this many bytes of JSON, per result.
MAX_ROWS = 1_000_000
MAX_RESULT_BYTES = 64 * 2**20
#: Largest request line accepted.
MAX_REQUEST_BYTES = 1 * 2**20
#: Readers served at once; more wait in the listen backlog.
MAX_CLIENTS = 4
FETCH_CHUNK = 2048


class QueryRefused(Exception):
    """A request that is not exactly one read statement, or one that failed; a one-line reason."""


def check_read_only(sql: str) -> str:
    """The single read statement in ``sql`` (as DuckDB parses it), or :class:`QueryRefused`."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(_one_line(exc)) from None
    if len(statements) != 1:
        raise QueryRefused(f"one statement per query, got {len(statements)}")
    statement = statements[0]
    kind = statement.type
    if kind == duckdb.StatementType.SELECT:
        return statement.query
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement: accept only the explanation of a plain SELECT.
        inner = statement.query.lstrip()[len("EXPLAIN") :]
        try:
            explained = duckdb.extract_statements(inner)
        except duckdb.Error:
            explained = []
        if len(explained) == 1 and explained[0].type == duckdb.StatementType.SELECT:
            return statement.query
    raise QueryRefused(
        f"only read statements (SELECT, EXPLAIN SELECT) are accepted, not {kind.name}"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID | bytes | bytearray | memoryview):
        return str(value) if isinstance(value, UUID) else bytes(value).hex()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def run_query(
    open_cursor: Callable[[], duckdb.DuckDBPyConnection],
    sql: str,
    params: Sequence[Any],
    *,
    timeout_s: float = QUERY_TIMEOUT_S,
    max_rows: int = MAX_ROWS,
    max_bytes: int = MAX_RESULT_BYTES,
) -> dict[str, Any]:
    """Run one checked read statement on a fresh cursor; the reply object (never raises)."""
    try:
        statement = check_read_only(sql)
    except QueryRefused as exc:
        return {"ok": False, "error": str(exc)}
    cursor = open_cursor()
    result: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            result.update(_execute(cursor, statement, params, max_rows, max_bytes))
        except Exception as exc:  # DuckDB errors, interrupts, bad params: the reader's problem
            result.update(ok=False, error=_one_line(exc))
        finally:
            done.set()

    worker = threading.Thread(target=work, name="accelwatch-read-query", daemon=True)
    worker.start()
    if not done.wait(timeout_s):
        with contextlib.suppress(Exception):
            cursor.interrupt()
        done.wait(5.0)
        result = {"ok": False, "error": f"query interrupted after {timeout_s:g} s"}
    with contextlib.suppress(Exception):
        cursor.close()
    return result


def _execute(
    cursor: duckdb.DuckDBPyConnection,
    statement: str,
    params: Sequence[Any],
    max_rows: int,
    max_bytes: int,
) -> dict[str, Any]:
    cursor.execute("BEGIN TRANSACTION")
    try:
        cursor.execute(statement, list(params) or None)
        description = cursor.description or []
        columns = [d[0] for d in description]
        types = [str(d[1]) for d in description]
        rows: list[list[Any]] = []
        size = 0
        while True:
            chunk = cursor.fetchmany(FETCH_CHUNK)
            if not chunk:
                break
            rows.extend(list(r) for r in chunk)
            size += len(json.dumps(chunk, default=_json_value))
            if len(rows) > max_rows or size > max_bytes:
                raise QueryRefused(
                    f"result too large (over {max_rows} rows or {max_bytes // 2**20} MiB); "
                    "add a LIMIT or aggregate"
                )
    finally:
        with contextlib.suppress(Exception):
            cursor.execute("ROLLBACK")
    return {"ok": True, "columns": columns, "types": types, "rows": rows}


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (Linux ``SO_PEERCRED``)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


def proc_path(dir_fd: int, name: str) -> str:
    """A short path to ``name`` in an open directory (Unix socket paths are limited to ~107
    bytes; the database may live deeper than that)."""
    return f"/proc/self/fd/{dir_fd}/{name}"


class ReadServer:
    """A :class:`agent.context.Consumer` that serves read queries for the recording's lifetime."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        from agent.runs import socket_path

        self.path = socket_path(db_path)
        self.context: LiveContext | None = None
        self.queries = 0
        self.refused = 0
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._thread: threading.Thread | None = None

    def start(self, context: LiveContext) -> None:
        self.context = context
        try:
            self._sock = self._bind()
        except OSError as exc:  # readers then see "in use"; the recording goes on
            context.note("read_server_unavailable", "agent", reason=_one_line(exc), path=self.path)
            return
        self._thread = threading.Thread(target=self._serve, name="accelwatch-read", daemon=True)
        self._thread.start()

    def _bind(self) -> socket.socket:
        """Bind in a fresh 0700 directory beside the database, chmod 0600, rename into place:
        the socket is never reachable by another user, not even for an instant."""
        parent = os.path.dirname(os.path.abspath(self.path))
        private = tempfile.mkdtemp(prefix=".accelwatch-sock-", dir=parent)  # mode 0700
        dir_fd = os.open(private, os.O_RDONLY | os.O_DIRECTORY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(proc_path(dir_fd, "s"))
            os.chmod("s", 0o600, dir_fd=dir_fd)
            # We hold the database's write lock, so any socket already there is a dead agent's.
            os.rename("s", self.path, src_dir_fd=dir_fd)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink("s", dir_fd=dir_fd)
            os.close(dir_fd)
            with contextlib.suppress(OSError):
                os.rmdir(private)
        return sock

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()  # blocks: an unused server costs nothing
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                _reply(conn, {"ok": False, "error": "too many readers at once; try again"})
                conn.close()
                continue
            threading.Thread(
                target=self._client, args=(conn,), name="accelwatch-read-client", daemon=True
            ).start()

    def _client(self, conn: socket.socket) -> None:
        try:
            if peer_uid(conn) != os.getuid():
                self.refused += 1
                _reply(conn, {"ok": False, "error": "another user's recording"})
                return
            conn.settimeout(None)
            reader = conn.makefile("rb")
            while not self._stop.is_set():
                line = reader.readline(MAX_REQUEST_BYTES + 1)
                if not line:
                    return
                reply = self._answer(line)
                if not _reply(conn, reply):
                    return
        except OSError:
            return
        finally:
            conn.close()
            self._slots.release()

    def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_REQUEST_BYTES:
            return {"ok": False, "error": "request too large"}
        try:
            request = json.loads(line)
            sql = str(request["sql"])
            params = list(request.get("params") or [])
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": 'bad request: expected {"sql": ..., "params": [...]}'}
        assert self.context is not None
        reply = run_query(self.context.cursor, sql, params)
        self.queries += 1
        if not reply.get("ok"):
            self.refused += 1
        return reply

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (Linux)
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:  # still ours
                    os.unlink(self.path)
        if self._thread is not None:
            self._thread.join(timeout=2.0)


def _reply(conn: socket.socket, reply: dict[str, Any]) -> bool:
    try:
        conn.sendall(json.dumps(reply, default=_json_value).encode() + b"\n")
        return True
    except OSError:
        return False
