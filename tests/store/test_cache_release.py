"""After a checkpoint the writer gives back DuckDB's cache of file blocks, and only those."""

from __future__ import annotations

import duckdb
import pytest

import agent.store_memory as store_memory
from agent.model import Batch
from agent.store import AGENT_DB_MEMORY, Store, connect
from agent.store_memory import memory_limit_text, release_file_cache

MEMORY = "SELECT tag, memory_usage_bytes, temporary_storage_bytes FROM duckdb_memory()"


def _usage(con) -> dict[str, tuple[int, int]]:
    return {tag: (used, spilled) for tag, used, spilled in con.execute(MEMORY).fetchall()}


def _recording_with_cached_blocks(tmp_path):
    con = connect(tmp_path / "a.duckdb")  # the writer's settings: 32 MB, one thread
    con.execute("CREATE TABLE t AS SELECT range AS i, random() AS v FROM range(1500000)")
    con.execute("CHECKPOINT")
    con.execute("SELECT sum(v) FROM t").fetchall()
    con.execute("ATTACH ':memory:' AS window_db")  # the live analysis' window lives so
    con.execute("CREATE TABLE window_db.w AS SELECT range AS i FROM range(200000)")
    return con


def test_cached_file_blocks_are_evicted_and_the_in_memory_window_stays(tmp_path):
    con = _recording_with_cached_blocks(tmp_path)
    shown = memory_limit_text(con)
    cached, _ = _usage(con)["BASE_TABLE"]
    window_before = _usage(con)["IN_MEMORY_TABLE"]
    assert cached > 8 * 2**20, "nothing cached: nothing to test"
    freed = release_file_cache(con, AGENT_DB_MEMORY, shown)
    after = _usage(con)
    assert freed > 4 * 2**20 and after["BASE_TABLE"][0] <= cached - freed
    assert after["IN_MEMORY_TABLE"] == window_before  # not spilled to the temp directory
    assert memory_limit_text(con) == shown  # the limit is back
    assert con.execute("SELECT sum(i) FROM window_db.w").fetchone()[0] == 199999 * 200000 // 2
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 1500000  # re-read: still there
    con.close()


def test_a_memory_limit_someone_else_changed_is_left_alone_and_so_is_the_cache(tmp_path):
    con = _recording_with_cached_blocks(tmp_path)
    shown = memory_limit_text(con)
    con.execute("SET memory_limit = '28MB'")
    changed = memory_limit_text(con)
    cached = _usage(con)["BASE_TABLE"][0]
    assert release_file_cache(con, AGENT_DB_MEMORY, shown) == 0
    assert memory_limit_text(con) == changed and _usage(con)["BASE_TABLE"][0] == cached
    con.close()


def _tick(ts: float) -> list[Batch]:
    entities = [f"gpu{i}" for i in range(8)] * 4
    metrics = [m for m in ("a", "b", "c", "d") for _ in range(8)]
    return [Batch("nvml", ts, entities, metrics, [ts % 7.0] * 32)]


def test_the_writer_releases_after_its_checkpoint_and_a_failed_release_is_counted_once(
    tmp_path, monkeypatch
):
    calls: list[str] = []

    def failing_release(con, memory_limit, shown):
        calls.append(shown)
        raise RuntimeError("no memory setting today")

    monkeypatch.setattr(
        "agent.store_writer.AGENT_DB_CHECKPOINT_BYTES", 0
    )  # every flush checkpoints
    monkeypatch.setattr("agent.store_writer.release_file_cache", failing_release)
    lines: list[str] = []
    store = Store(tmp_path / "a.duckdb", report=lines.append)
    for i in range(3):
        assert store.write_ticks([("run-1", _tick(1_700_000_000.0 + i))]) == 32
    assert len(calls) == 3 and calls[0] == memory_limit_text(store.con)
    assert store.health()["store.cache_release_failures"] == 3
    assert [line for line in lines if "block cache" in line] == [
        "cannot release DuckDB's block cache: no memory setting today"
    ]
    assert store.health()["store.state"] == "ok"  # recording goes on
    count = store.cursor().execute("SELECT count(*) FROM samples").fetchone()[0]
    assert count == 96
    store.close()


class _RestoreRunsOutOfMemory:
    """The writer's connection, except that the first ``failures`` statements putting the limit
    back raise DuckDB's out-of-memory error (as when a pass beside the release holds what the
    margin left)."""

    def __init__(self, con, memory_limit: str, failures: int) -> None:
        self.con, self.restore, self.failures, self.restores = con, memory_limit, failures, 0

    def execute(self, sql, *args):
        if sql == f"SET memory_limit = '{self.restore}'":
            self.restores += 1
            if self.restores <= self.failures:
                raise duckdb.OutOfMemoryException("could not allocate block of size 256.0 KiB")
        return self.con.execute(sql, *args)


def test_a_limit_that_cannot_be_put_back_at_once_is_put_back_when_it_can(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.store_memory.RESTORE_PAUSE_S", 0.0)
    con = _recording_with_cached_blocks(tmp_path)
    shown = memory_limit_text(con)
    flaky = _RestoreRunsOutOfMemory(con, AGENT_DB_MEMORY, failures=2)
    assert release_file_cache(flaky, AGENT_DB_MEMORY, shown) > 4 * 2**20
    assert flaky.restores == 3 and memory_limit_text(con) == shown
    # A later release still works: it did not find "someone else's" limit at the floor.
    con.execute("SELECT sum(v) FROM t").fetchall()
    assert release_file_cache(con, AGENT_DB_MEMORY, shown) > 0
    con.close()


def test_a_limit_that_never_goes_back_raises_for_the_writer_to_count(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.store_memory.RESTORE_PAUSE_S", 0.0)
    con = _recording_with_cached_blocks(tmp_path)
    flaky = _RestoreRunsOutOfMemory(con, AGENT_DB_MEMORY, failures=10**6)
    with pytest.raises(duckdb.OutOfMemoryException):
        release_file_cache(flaky, AGENT_DB_MEMORY, memory_limit_text(con))
    assert flaky.restores == store_memory.RESTORE_TRIES
    con.close()
