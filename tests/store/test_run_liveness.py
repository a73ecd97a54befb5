"""A run whose agent died (kill -9) reads as ``lost`` with its last sample time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import duckdb

from agent.store import (
    HEARTBEAT_STALE_S,
    SCHEMA_VERSION,
    Store,
    connect,
    effective_status,
    list_runs,
    this_host,
)
from tests.helpers import wait_until

_RECORDER = textwrap.dedent(
    """
    import sys, time
    from agent.model import BatchBuilder, RunInfo
    from agent.store import Store
    store = Store(sys.argv[1], flush_interval=0.2)
    run = RunInfo(run_id="r1", name="job", pid=1, cmdline=["job"], cwd="/", host="h",
                  started=time.time(), interval=0.1, db_path=sys.argv[1])
    store.write_run(run)
    store.start()
    i = 0
    while True:
        b = BatchBuilder("host", 1000.0 + i)
        b.add("host", "host.cpu.utilization", 0.5)
        store.submit("r1", [b.build()])
        if i == 10:
            print("recording", flush=True)
        i += 1
        time.sleep(0.05)
    """
)


def _row(**kw):
    base = {"status": "running", "agent_host": this_host(), "agent_pid": os.getpid()}
    base["heartbeat"] = datetime.now(timezone.utc).replace(tzinfo=None)
    return {**base, **kw}


def test_finished_runs_keep_their_recorded_status():
    for status in ("finished", "stopped", "incomplete"):
        assert effective_status(_row(status=status, agent_pid=999_999_999)) == status


def test_running_run_with_a_live_agent_and_fresh_heartbeat_is_running():
    assert effective_status(_row()) == "running"


def test_running_run_whose_agent_pid_is_gone_on_this_host_is_lost():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert effective_status(_row(agent_pid=dead.pid)) == "lost"


def test_running_run_of_another_host_is_lost_once_heartbeat_is_stale_and_file_unlocked():
    now = time.time()
    old = datetime.fromtimestamp(now - HEARTBEAT_STALE_S - 1, timezone.utc).replace(tzinfo=None)
    row = _row(agent_host="elsewhere", agent_pid=1, heartbeat=old)
    assert effective_status(row, now) == "lost"
    assert effective_status(row, now, locked=True) == "running"
    fresh = _row(agent_host="elsewhere", agent_pid=1)
    assert effective_status(fresh, now) == "running"


def test_version_1_row_without_agent_columns_is_lost_when_unlocked():
    assert effective_status({"status": "running"}) == "lost"
    assert effective_status({"status": "running"}, locked=True) == "running"


def test_kill_9_of_the_agent_shows_the_run_lost_with_its_last_sample(tmp_path):
    path = tmp_path / "a.duckdb"
    agent = subprocess.Popen(
        [sys.executable, "-c", _RECORDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert agent.stdout.readline().strip() == "recording"
    time.sleep(0.5)  # at least two flushes
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()
    con = connect(path, read_only=True)
    try:
        (run,) = list_runs(con)
        newest = con.execute("SELECT max(ts) FROM samples").fetchone()[0]
    finally:
        con.close()
    assert run["recorded_status"] == "running"
    assert run["status"] == "lost"
    assert run["agent_pid"] == agent.pid and run["agent_host"] == this_host()
    assert run["last_sample"] == newest
    assert run["heartbeat"] is not None


def test_heartbeat_and_last_sample_advance_on_each_flush(tmp_path):
    from agent.model import BatchBuilder, RunInfo

    store = Store(tmp_path / "a.duckdb", flush_interval=0.1)
    run = RunInfo("r", "job", 1, ["job"], "/", "h", time.time(), 1.0, str(store.path))
    store.write_run(run)
    store.start()
    b = BatchBuilder("host", 1234.0)
    b.add("host", "host.cpu.utilization", 0.5)
    store.submit("r", [b.build()])
    cur = store.cursor()
    assert wait_until(
        lambda: cur.execute("SELECT epoch(last_sample) FROM runs").fetchone()[0] == 1234.0
    )
    (row,) = list_runs(cur)
    assert row["status"] == "running"
    store.close()


def test_version_1_file_is_migrated_keeping_its_runs(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    from agent.store import _SCHEMA_V1, _V1_RUNS_VIEW

    con.execute(_SCHEMA_V1)
    con.execute(_V1_RUNS_VIEW)
    con.execute("INSERT INTO accelwatch_meta VALUES ('schema_version', '1')")
    con.execute(
        "INSERT INTO run_log (run_id, name, status, started, logged) "
        "VALUES ('old', 'job', 'finished', now()::TIMESTAMP, now()::TIMESTAMP)"
    )
    con.close()
    ro = connect(path, read_only=True)  # a reader does not migrate, and still lists runs
    assert [r["status"] for r in list_runs(ro)] == ["finished"]
    ro.close()
    rw = connect(path)
    version = rw.execute("SELECT value FROM accelwatch_meta WHERE key='schema_version'").fetchone()
    cols = [d[0] for d in rw.execute("SELECT * FROM runs").description]
    rw.close()
    assert int(version[0]) == SCHEMA_VERSION
    assert cols[:16] == [
        "run_id", "name", "mode", "pid", "cmdline", "cwd", "host", "started", "ended",
        "exit_code", "status", "interval_s", "tags", "env", "simulated", "scenario",
    ]  # fmt: skip
    assert cols[16:] == ["last_sample", "agent_host", "agent_pid", "heartbeat", "lost_ticks"]
