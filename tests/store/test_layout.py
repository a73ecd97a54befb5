"""Schema 3's layout: series ids behind the same public views, version-2 files migrated on open
for writing and read as they are otherwise, and a writer whose ids survive a failed flush."""

from __future__ import annotations

import json

import duckdb
import pytest

from agent.model import BatchBuilder, RunInfo
from agent.report import build_report
from agent.runs import LocalReadConnection
from agent.series import has_series
from agent.store import (
    _SCHEMA_V1,
    _SCHEMA_V2,
    _V1_RUNS_VIEW,
    AGENT_DB_MEMORY,
    READER_DB_MEMORY,
    SCHEMA_VERSION,
    Store,
    connect,
)

VIEWS = ("runs", "samples", "events", "entities", "findings")
T0 = 1_700_000_000


def _v2_file(path) -> None:
    """A version-2 database as the version-2 writer left it: labels on every sample row."""
    con = duckdb.connect(str(path))
    con.execute(_SCHEMA_V1)
    con.execute(_V1_RUNS_VIEW)
    con.execute(_SCHEMA_V2)
    con.execute("INSERT INTO accelwatch_meta VALUES ('schema_version', '2')")
    for n, run in enumerate(("first", "second")):
        started = T0 + 1000 * n
        con.execute(
            "INSERT INTO run_log (run_id, name, mode, pid, cmdline, cwd, host, started, ended, "
            "exit_code, status, interval_s, tags, env, simulated, scenario, logged, agent_host, "
            "agent_pid, lost_ticks) VALUES (?, 'job', 'run', 42, ['python', 'train.py'], '/', "
            "'h', to_timestamp(?)::TIMESTAMP, to_timestamp(?)::TIMESTAMP, 0, 'finished', 1.0, "
            "'{}', '{}', false, NULL, to_timestamp(?)::TIMESTAMP, 'h', 42, 0)",
            [run, started, started + 60, started + 61],
        )
        con.execute(
            "INSERT INTO run_heartbeat VALUES (?, to_timestamp(?)::TIMESTAMP, "
            "to_timestamp(?)::TIMESTAMP)",
            [run, started + 60, started + 59],
        )
        con.execute(
            """INSERT INTO sample_values
            SELECT ?, to_timestamp(? + t)::TIMESTAMP, 'nvml', 'gpu' || g, m,
                   CASE m WHEN 'gpu.utilization' THEN (t % 10) / 10.0
                          ELSE 500.0 * t + 1e6 END
            FROM range(60) a(t), range(2) b(g), (VALUES ('gpu.utilization'), ('gpu.energy')) c(m)
            UNION ALL
            SELECT ?, to_timestamp(? + t)::TIMESTAMP, 'host', 'host', 'host.cpu.utilization',
                   0.25 FROM range(60) a(t)""",
            [run, started, run, started],
        )
        con.execute(
            "INSERT INTO event_log VALUES (?, to_timestamp(?)::TIMESTAMP, 'run_start', 'job', "
            "'{\"pid\": 42}')",
            [run, started],
        )
        con.execute(
            "INSERT INTO entity_log VALUES (?, to_timestamp(?)::TIMESTAMP, 'nvml', 'gpu0', "
            '\'{"name": "NVIDIA H100"}\')',
            [run, started],
        )
        con.execute(
            "INSERT INTO findings VALUES (?, 'throttling', 'warning', 'gpu0', "
            "to_timestamp(?)::TIMESTAMP, to_timestamp(?)::TIMESTAMP, 'hot', '{}', 'cool it', "
            "false, to_timestamp(?)::TIMESTAMP)",
            [run, started + 10, started + 40, started + 61],
        )
    con.close()


def _views(con) -> dict[str, tuple[list, list]]:
    out = {}
    for view in VIEWS:
        cur = con.execute(f"SELECT * FROM {view} ORDER BY ALL")
        columns = [(d[0], str(d[1])) for d in cur.description]
        out[view] = (columns, cur.fetchall())
    return out


def _batch(ts: float, source: str, values: dict[tuple[str, str], float]):
    b = BatchBuilder(source, ts)
    for (entity, metric), value in values.items():
        b.add(entity, metric, value)
    return b.build()


def test_version_2_file_is_migrated_on_open_for_writing_with_identical_views(tmp_path):
    path = tmp_path / "v2.duckdb"
    _v2_file(path)
    ro = connect(path, read_only=True)
    before = _views(ro)
    assert not has_series(ro)
    ro.close()
    rw = connect(path)
    after = _views(rw)
    version = rw.execute("SELECT value FROM accelwatch_meta WHERE key = 'schema_version'")
    assert int(version.fetchall()[0][0]) == SCHEMA_VERSION == 6
    assert has_series(rw)
    physical = [d[0] for d in rw.execute("SELECT * FROM sample_values LIMIT 0").description]
    per_run = rw.execute(
        "SELECT run_id, min(series_id), max(series_id), count(*) FROM series GROUP BY ALL "
        "ORDER BY 2"
    ).fetchall()
    rw.close()
    assert physical == ["series_id", "ts", "value"]
    assert after == before
    assert len(before["samples"][1]) == 2 * (60 * 4 + 60)
    # each run's series form one range of ids, the earlier run's first
    assert [(r, n) for r, _, _, n in per_run] == [("first", 5), ("second", 5)]
    assert per_run[0][2] < per_run[1][1]


def test_old_file_is_read_as_it_is_and_left_byte_identical(tmp_path):
    path = tmp_path / "v2.duckdb"
    _v2_file(path)
    before = path.read_bytes()
    ro = connect(path, read_only=True)
    try:
        assert not has_series(ro)
        report = build_report(LocalReadConnection(ro), "second", str(path))
    finally:
        ro.close()
    assert path.read_bytes() == before
    assert [d.entity for d in report.summary.devices] == ["gpu0", "gpu1"]


def test_report_of_a_migrated_file_equals_the_report_of_the_version_2_file(tmp_path):
    """The summary's scans by series id compute what the version-2 queries over labels did."""
    path = tmp_path / "v2.duckdb"
    _v2_file(path)
    ro = connect(path, read_only=True)
    old = build_report(LocalReadConnection(ro), "first", str(path)).to_json()
    ro.close()
    connect(path).close()  # migrate
    ro = connect(path, read_only=True)
    new = build_report(LocalReadConnection(ro), "first", str(path)).to_json()
    ro.close()
    assert json.dumps(new, sort_keys=True, default=str) == json.dumps(
        old, sort_keys=True, default=str
    )
    (gpu0, _) = new["summary"]["devices"]
    assert gpu0["name"] == "NVIDIA H100" and gpu0["util_p50"] == pytest.approx(0.45)


def test_recording_into_a_migrated_file_gives_new_series_new_ids(tmp_path):
    path = tmp_path / "v2.duckdb"
    _v2_file(path)
    store = Store(path)
    store.write_ticks(
        [("third", [_batch(T0 + 5000.0, "nvml", {("gpu0", "gpu.utilization"): 0.5})])]
    )
    con = store.cursor()
    ids = con.execute("SELECT run_id, series_id FROM series ORDER BY series_id").fetchall()
    rows = con.execute(
        "SELECT run_id, entity, metric, value FROM samples WHERE run_id = 'third'"
    ).fetchall()
    store.close()
    assert len({i for _, i in ids}) == len(ids) == 11
    assert ids[-1][0] == "third"
    assert rows == [("third", "gpu0", "gpu.utilization", 0.5)]


def test_samples_view_keeps_its_columns_and_types_in_a_new_file(tmp_path):
    con = connect(tmp_path / "a.duckdb")
    cols = [(d[0], str(d[1])) for d in con.execute("SELECT * FROM samples LIMIT 0").description]
    con.close()
    assert cols == [
        ("run_id", "VARCHAR"), ("ts", "TIMESTAMP"), ("source", "VARCHAR"),
        ("entity", "VARCHAR"), ("metric", "VARCHAR"), ("value", "DOUBLE"),
    ]  # fmt: skip


def test_each_series_is_stored_once_and_every_tick_only_as_ids(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    layout = {("gpu0", "gpu.utilization"): 0.9, ("gpu0", "gpu.power"): 500.0}
    for i in range(5):
        store.write_ticks([("r", [_batch(T0 + i, "nvml", layout)])])
    # a changed layout (a new process) adds only its new series
    store.write_ticks([("r", [_batch(T0 + 5, "nvml", {**layout, ("gpu1", "gpu.power"): 1.0})])])
    con = store.cursor()
    series = con.execute("SELECT count(*) FROM series").fetchall()[0][0]
    samples = con.execute("SELECT count(*) FROM samples WHERE run_id = 'r'").fetchall()[0][0]
    store.close()
    assert (series, samples) == (3, 5 * 2 + 3)


def test_a_failed_flush_leaves_no_series_id_the_file_lacks(tmp_path, monkeypatch):
    store = Store(tmp_path / "a.duckdb")
    tick = [_batch(T0, "host", {("host", "host.cpu.utilization"): 0.5})]
    real_beat = store._beat

    def failing_beat(run_id, batches, con=None):
        raise duckdb.IOException("IO Error: No space left on device")

    monkeypatch.setattr(store, "_beat", failing_beat)
    with pytest.raises(duckdb.IOException):
        store.write_ticks([("r", tick)])
    monkeypatch.setattr(store, "_beat", real_beat)
    store.write_ticks([("r", tick)])
    store.write_ticks([("r", [_batch(T0 + 1, "host", {("host", "host.cpu.utilization"): 0.6})])])
    con = store.cursor()
    series = con.execute("SELECT series_id, entity FROM series").fetchall()
    rows = con.execute("SELECT entity, value FROM samples ORDER BY ts").fetchall()
    store.close()
    assert series == [(1, "host")]
    assert rows == [("host", 0.5), ("host", 0.6)]


def test_readers_do_not_inherit_the_recorders_memory_cap(tmp_path):
    path = tmp_path / "a.duckdb"
    connect(path).close()
    ro = connect(path, read_only=True)
    memory, threads = ro.execute(
        "SELECT current_setting('memory_limit'), current_setting('threads')"
    ).fetchall()[0]
    ro.close()
    rw = connect(path)
    writer = rw.execute(
        "SELECT current_setting('memory_limit'), current_setting('threads')"
    ).fetchall()[0]
    rw.close()

    def setting(memory_limit: str) -> str:
        con = duckdb.connect(config={"memory_limit": memory_limit})
        try:
            return con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        finally:
            con.close()

    assert writer == (setting(AGENT_DB_MEMORY), 1)
    assert memory == setting(READER_DB_MEMORY) != writer[0]
    default_threads = duckdb.connect().execute("SELECT current_setting('threads')").fetchall()
    assert threads == default_threads[0][0]


def test_energy_counts_the_counters_increases_not_its_starting_value(tmp_path):
    """An NVML energy counter counts since the driver loaded: the run's energy is what it
    added during the run (500 J per second for 59 s here), not its value at the start."""
    store = Store(tmp_path / "a.duckdb")
    run = RunInfo("r", "job", 1, ["job"], "/", "h", T0, 1.0, str(store.path), ended=T0 + 59)
    store.write_run(run)
    for t in range(60):
        values = {("gpu0", "gpu.utilization"): 0.9, ("gpu0", "gpu.energy"): 7e9 + 500.0 * t}
        store.write_ticks([("r", [_batch(T0 + t, "nvml", values)])])
    store.close()
    ro = connect(store.path, read_only=True)
    try:
        report = build_report(LocalReadConnection(ro), "r", str(store.path))
    finally:
        ro.close()
    assert report.summary.energy_kwh == pytest.approx(500 * 59 / 3.6e6)


def test_version_3_file_without_the_series_layout_gets_it_on_open_for_writing(tmp_path):
    """A file written while version 3 was assembled (its tracking tables, labelled samples)."""
    from agent.store import _SCHEMA_V3_TRACKING

    path = tmp_path / "v3-early.duckdb"
    _v2_file(path)
    con = duckdb.connect(str(path))
    con.execute(_SCHEMA_V3_TRACKING)
    con.execute("UPDATE accelwatch_meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    ro = connect(path, read_only=True)
    before = _views(ro)
    ro.close()
    rw = connect(path)
    try:
        assert has_series(rw)
        assert _views(rw) == before
    finally:
        rw.close()
