"""Recorded runs shared by the analysis tests: each distinct recording is made once."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import duckdb
import pytest

from agent.analysis import analyze_run
from agent.store import connect
from tests.analysis.recording import Recording, record


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> Callable[[str, Recording], tuple[str, str]]:
    """``recorded(key, spec)`` → (db path, run id); recorded once per key per session."""
    cache: dict[str, tuple[str, str]] = {}

    def get(key: str, spec: Recording) -> tuple[str, str]:
        if key not in cache:
            path = tmp_path_factory.mktemp("runs") / f"{key}.duckdb"
            db, run_id = record(path, spec)
            cache[key] = (str(db), run_id)
        return cache[key]

    return get


@pytest.fixture
def open_db() -> Iterator[Callable[[str], duckdb.DuckDBPyConnection]]:
    cons: list[duckdb.DuckDBPyConnection] = []

    def opener(path: str) -> duckdb.DuckDBPyConnection:
        con = connect(path)
        cons.append(con)
        return con

    yield opener
    for con in cons:
        con.close()


@pytest.fixture
def analysed(recorded, open_db):
    """``analysed(key, spec)`` → the findings of a post-run analysis of that recording, not
    stored: the recordings are shared, and other tests read them as the recorder left them."""

    def run(key: str, spec: Recording):
        db, run_id = recorded(key, spec)
        return analyze_run(open_db(db), run_id, store=False)

    return run
