"""The reader's end of ``<db>.sock``: the same ``execute(sql, params)`` as a local read-only
connection, answered by the agent that records the database (see :mod:`agent.readserver`)."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from agent.errors import StoreError, StoreInUseError, UsageError
from agent.runs import ReadResult, socket_path

#: How long a reader waits for one answer (the server interrupts queries after 10 s).
REPLY_TIMEOUT_S = 30.0


class QueryError(UsageError):
    """The agent refused or failed a query (not a read statement, too large, timed out...)."""


def connect_agent(db_path: str | os.PathLike[str]) -> AgentReadConnection:
    """Connect to the agent recording ``db_path``, or say in one line why readers can't."""
    path = socket_path(db_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StoreInUseError(
            f"{db_path} is being recorded; cannot reach {parent}: {exc}"
        ) from None
    try:
        sock.settimeout(REPLY_TIMEOUT_S)
        sock.connect(f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}")
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise StoreInUseError(
            f"{db_path} is in use by another process that does not serve readers "
            f"(no agent answers on {path}); read it once that process ends"
        ) from None
    except PermissionError:
        sock.close()
        raise StoreInUseError(
            f"{db_path} is being recorded by another user's agent ({path} is not yours)"
        ) from None
    except OSError as exc:
        sock.close()
        raise StoreInUseError(f"{db_path} is being recorded; cannot reach {path}: {exc}") from None
    finally:
        os.close(dir_fd)
    return AgentReadConnection(sock, str(db_path))


class AgentReadConnection:
    """Queries over the recording agent's socket; one request at a time (threads take turns)."""

    via = "agent"
    duckdb = None

    def __init__(self, sock: socket.socket, db_path: str) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self._lock = threading.Lock()
        self.db_path = db_path

    def execute(self, sql: str, params: Sequence[Any] = ()) -> ReadResult:
        request = json.dumps({"sql": sql, "params": list(params)}, default=_param)
        with self._lock:
            try:
                self._sock.sendall(request.encode() + b"\n")
                line = self._file.readline()
            except OSError as exc:
                raise StoreError(f"lost the recording agent of {self.db_path}: {exc}") from None
        if not line:
            raise StoreError(f"the recording agent of {self.db_path} closed the connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise QueryError(str(reply.get("error", "query failed")))
        types = reply.get("types") or []
        rows = [tuple(_decode(v, t) for v, t in zip(r, types)) for r in reply["rows"]]
        return ReadResult(tuple(reply["columns"]), rows)

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _param(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _decode(value: Any, duck_type: str) -> Any:
    """Undo the JSON encoding of a DuckDB value of ``duck_type`` (timestamps came as ISO)."""
    if value is None:
        return None
    if duck_type.startswith("TIMESTAMP") and isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed
    if duck_type == "DATE" and isinstance(value, str):
        return date.fromisoformat(value)
    return value
