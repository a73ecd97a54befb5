"""What the store promises when things go wrong: private files, a full disk, a damaged file,
a 500-process tree under a small memory cap. Real DuckDB files, real child processes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from agent.store import DEFAULT_FLUSH_INTERVAL, NEW_FILE_BLOCK_SIZE, Store
from agent.store_writer import HEARTBEAT_EVERY_S
from tests.helpers import REPO, accelwatch, wait_until

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _modes(directory: Path) -> dict[str, int]:
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            p = Path(root, name)
            with _suppress_gone():
                out[str(p.relative_to(directory))] = p.lstat().st_mode
    return out


class _suppress_gone:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, FileNotFoundError)


def _assert_private(modes: dict[str, int], directory: Path) -> None:
    for name, mode in modes.items():
        want = 0o700 if stat.S_ISDIR(mode) else 0o600
        assert stat.S_IMODE(mode) == want, f"{name} is {oct(stat.S_IMODE(mode))}, want {oct(want)}"


@pytest.fixture
def shared_dir():
    """A directory every user may enter (as ``/tmp`` is), so only file modes protect files."""
    d = Path(tempfile.mkdtemp(prefix="accelwatch-modes-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, timeout=10)


needs_root_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to read the files as another user",
)


@needs_root_setpriv
def test_database_wal_and_temp_dir_are_private_while_recording_and_after(shared_dir):
    db = shared_dir / "a.duckdb"
    secret = "--token=hunter2-secret"
    agent = subprocess.Popen(
        accelwatch(
            "run", "--db", str(db), "--headless", "--interval", "0.1", "--live-every", "0.1", "--",
            sys.executable, "-c", "import sys, time; time.sleep(4)", secret,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )  # fmt: skip
    try:
        wal = db.with_name(db.name + ".wal")

        def holds_secret() -> bool:  # the command line is on disk; a checkpoint may have
            try:  # moved it from the WAL into the file (and removed the WAL for an instant)
                return wal.exists() and any(b"hunter2" in p.read_bytes() for p in (wal, db))
            except FileNotFoundError:
                return False

        assert wait_until(holds_secret, timeout=15), "the database never held the command line"
        during = _modes(shared_dir)
        assert {"a.duckdb", "a.duckdb.wal", "a.duckdb.tmp"} <= set(during), during
        _assert_private(during, shared_dir)
        for target in (db, wal):
            denied = _as_nobody("cat", str(target))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        denied = _as_nobody("ls", str(db.with_name(db.name + ".tmp")))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    finally:
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    _assert_private(_modes(shared_dir), shared_dir)


@needs_root_setpriv
def test_duckdb_spill_files_are_private(shared_dir):
    store = Store(shared_dir / "a.duckdb")
    seen: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(_modes(shared_dir))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:  # a sort bigger than the agent's memory cap spills into <db>.tmp
        store.cursor().execute(
            "SELECT count(*) FROM (SELECT md5(i::VARCHAR) m FROM range(2000000) t(i) ORDER BY m)"
        ).fetchall()
    finally:
        done.set()
        watcher.join()
        store.close()
    spills = [n for n in seen if n.startswith("a.duckdb.tmp/")]
    assert spills, f"the query did not spill: {seen}"
    _assert_private(seen, shared_dir)


def test_job_log_is_private_and_the_job_keeps_the_users_umask(tmp_path):
    from agent.app.session import Session, SessionConfig
    from agent.store import user_umask

    made = tmp_path / "made-by-job"
    config = SessionConfig(
        db_path=str(tmp_path / "a.duckdb"),
        interval=0.2,
        job_log=str(tmp_path / "job.log"),
        live_analysis=False,
    )
    session = Session(config)
    session.launch([sys.executable, "-c", f"open({str(made)!r}, 'w').write('x'); print('hi')"])
    session.wait()
    session.finish()
    assert stat.S_IMODE(os.stat(config.job_log).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o666 & ~user_umask()
    assert os.umask(0o077) == 0o077  # the agent's own files stay private


# -- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 6 MiB tmpfs to fill up; skipped (reason printed) where mounting is not allowed."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}"
        print(reason)
        pytest.skip(reason)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of ``directory`` up, then give back ``leave`` bytes."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        with _suppress_enospc():
            while True:
                fh.write(b"\0" * 65536)
        with _suppress_enospc():
            while True:
                fh.write(b"\0" * 512)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


class _suppress_enospc:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, OSError) and exc.errno == 28


def _tick(i: float, n: int = 400):
    from agent.model import BatchBuilder

    b = BatchBuilder("process", 1000.0 + i)
    for e in range(n):
        b.add(str(e), "process.cpu.utilization", (i * e) % 7 / 7)
    return [b.build()]


def _run(store: Store):
    from agent.model import RunInfo

    run = RunInfo("r", "job", 1, ["job"], "/", "h", time.time(), 0.1, str(store.path))
    store.write_run(run)
    return run


def test_full_disk_is_reported_once_buffered_and_written_when_space_returns(small_fs):
    lines: list[str] = []
    store = Store(small_fs / "a.duckdb", flush_interval=0.1, report=lines.append)
    _run(store)
    store.start()
    filler = fill(small_fs)
    i = 0
    while not store.state.startswith("disk full") and i < 200:
        store.submit("r", _tick(i))
        i += 1
        time.sleep(0.02)
    assert store.state.startswith("disk full: "), (store.state, store.last_error)
    assert "ticks buffered, 0 dropped" in store.state
    for _ in range(20):  # more ticks while the disk stays full
        store.submit("r", _tick(i))
        i += 1
        time.sleep(0.02)
    assert len(lines) == 1 and "disk full" in lines[0], lines
    assert store.health()["store.buffered_ticks"] > 0
    filler.unlink()
    assert wait_until(lambda: store.state == "ok", timeout=15), store.state
    assert "again" in lines[-1]
    store.close()
    from tests.helpers import query

    assert query(store.path, "SELECT count(DISTINCT ts) FROM samples")[0][0] == i
    assert store.lost_ticks == 0


def test_full_disk_beyond_the_buffer_drops_oldest_ticks_and_counts_them(small_fs):
    store = Store(small_fs / "a.duckdb", flush_interval=0.1, max_pending_ticks=5, report=print)
    _run(store)
    store.start()
    filler = fill(small_fs)
    for i in range(60):
        store.submit("r", _tick(i))
        time.sleep(0.01)
    assert wait_until(lambda: store.dropped_ticks > 0, timeout=10), store.state
    assert f"{store.lost_ticks} dropped" in store.state
    filler.unlink()
    store.close()
    from tests.helpers import query

    written = query(store.path, "SELECT count(DISTINCT ts) FROM samples")[0][0]
    assert written + store.lost_ticks == 60
    (lost,) = query(store.path, "SELECT lost_ticks FROM runs")[0]
    assert lost == 0  # the row written at start; finalization writes the count (next test)


def _record(db: Path, seconds: float, exit_code: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        accelwatch(
            "run", "--db", str(db), "--headless", "--interval", "0.1", "--live-every", "0.1", "--",
            sys.executable, "-c", f"import sys, time; time.sleep({seconds}); sys.exit({exit_code})",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )  # fmt: skip


def _stderr_lines(proc: subprocess.Popen[str]) -> list[str]:
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return lines


def test_headless_run_on_a_full_disk_keeps_the_jobs_exit_code_and_resumes(small_fs):
    from tests.helpers import query

    db = small_fs / "a.duckdb"
    agent = _record(db, 6, exit_code=3)
    lines = _stderr_lines(agent)
    assert wait_until(lambda: any("procs=" in ln for ln in lines), timeout=15), lines
    filler = fill(small_fs)
    assert wait_until(lambda: any("cannot write" in ln for ln in lines), timeout=5), lines[-5:]
    time.sleep(1.0)
    filler.unlink()
    agent.wait(timeout=60)
    err = "".join(lines)
    assert agent.returncode == 3, err
    assert "Traceback" not in err
    assert sum("cannot write" in ln for ln in lines) == 1
    assert any("again" in ln for ln in lines)
    assert any("procs=" in ln and "store: disk full: " in ln for ln in lines)  # the live line
    ((status, lost),) = query(db, "SELECT status, lost_ticks FROM runs")
    assert (status, lost) == ("finished", 0)
    (detail,) = query(db, "SELECT detail FROM events WHERE kind = 'run_end'")[0]
    assert '"lost_ticks": 0' in detail and '"store_failures": 0' not in detail


def test_disk_still_full_at_the_end_keeps_the_exit_code_and_counts_what_was_lost(small_fs):
    import re

    from agent.store import connect, list_runs

    db = small_fs / "a.duckdb"
    agent = _record(db, 3, exit_code=0)
    lines = _stderr_lines(agent)
    assert wait_until(lambda: any("procs=" in ln for ln in lines), timeout=15), lines
    filler = fill(small_fs)
    agent.wait(timeout=60)
    err = "".join(lines)
    assert agent.returncode == 0, err
    assert "Traceback" not in err
    abandoned = re.search(r"(\d+) ticks could not be written", err)
    assert abandoned, err[-2000:]
    filler.unlink()
    con = connect(db, read_only=True)
    try:
        (run,) = list_runs(con)
    finally:
        con.close()
    if "could not finalize run" in err:  # not even the run's last row fitted: the agent is gone
        assert run["status"] == "lost" and run["last_sample"] is not None
    else:  # the small final row fitted into the WAL's last page
        assert run["status"] == "incomplete"
        assert run["lost_ticks"] == int(abandoned.group(1)) > 0


def test_ticks_lost_to_a_full_disk_finalize_the_run_as_incomplete(small_fs):
    from agent.app.session import Session, SessionConfig
    from tests.helpers import query

    session = Session(SessionConfig(db_path=str(small_fs / "a.duckdb"), interval=0.05))
    session.store.max_pending_ticks = 3
    session.launch([sys.executable, "-c", "import time; time.sleep(30)"])
    assert wait_until(lambda: session.store.rows_written > 0, timeout=10)
    filler = fill(small_fs)
    seen: list[dict] = []

    def dropping() -> bool:
        seen.append(dict(session.context.health))
        state = seen[-1].get("store.state", "ok")
        return state.startswith("disk full: ") and seen[-1]["store.lost_ticks"] > 0

    assert wait_until(dropping, timeout=10), seen[-1]
    assert f"{seen[-1]['store.lost_ticks']} dropped" in seen[-1]["store.state"]
    assert seen[-1]["store_error"] == seen[-1]["store.state"]  # what the UI header shows
    filler.unlink()
    assert wait_until(lambda: session.store.state == "ok", timeout=15), session.store.state
    session.child.terminate()
    session.wait()
    run = session.finish()
    assert run.status == "incomplete"
    ((status, lost),) = query(session.store.path, "SELECT status, lost_ticks FROM runs")
    assert status == "incomplete" and lost == session.store.lost_ticks > 0
    (detail,) = query(session.store.path, "SELECT detail FROM events WHERE kind='run_end'")[0]
    assert f'"lost_ticks": {lost}' in detail


# -- a damaged file ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded_db(tmp_path_factory) -> Path:
    from tests.helpers import run_cli

    db = tmp_path_factory.mktemp("recorded") / "run.duckdb"
    done = run_cli(
        "run", "--db", str(db), "--headless", "--interval", "0.1", "--",
        sys.executable, "-c", "import time; time.sleep(1.5)",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return db


def _truncate(keep: float):
    return lambda p: os.truncate(p, int(p.stat().st_size * keep))


def _overwrite(offset: int, n: int):
    def damage(p: Path) -> None:
        with open(p, "r+b") as fh:
            fh.seek(offset)
            fh.write(bytes((i * 37 + 11) % 256 for i in range(n)))

    return damage


DAMAGE = {
    "truncated-to-half": _truncate(0.5),
    "truncated-to-5000-bytes": lambda p: os.truncate(p, 5000),
    "overwritten-header": _overwrite(4096, 64),
    "overwritten-first-block": _overwrite(12288, 4096),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["runs", "report", "view", "run"])
def test_damaged_database_is_one_line_and_exit_4_for_every_command(
    recorded_db, tmp_path, damage, command
):
    from tests.helpers import run_cli

    db = tmp_path / "damaged.duckdb"
    shutil.copy(recorded_db, db)
    DAMAGE[damage](db)
    before = db.read_bytes()
    marker = tmp_path / "job-started"
    args = {
        "runs": ["runs", "--db", str(db)],
        "report": ["report", "--db", str(db)],
        "view": ["view", "--db", str(db)],
        "run": ["run", "--db", str(db), "--headless", "--", "touch", str(marker)],
    }[command]
    done = run_cli(*args, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "damaged" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not marker.exists(), "the job was started on a damaged database"
    assert db.read_bytes() == before, "a command wrote into the damaged file"
    assert sorted(os.listdir(tmp_path)) == ["damaged.duckdb"]


def test_recording_refuses_a_file_with_a_damaged_sample_block(recorded_db, tmp_path):
    """Damage deep in the data, past what a reader's quick check reads: the writer's full
    check finds it before the job starts."""
    from agent.errors import StoreCorruptError
    from agent.store import connect

    db = tmp_path / "damaged.duckdb"
    shutil.copy(recorded_db, db)
    con = connect(db, read_only=True)
    blocks = con.execute("SELECT block_id FROM pragma_storage_info('sample_span_rows')").fetchall()
    ((block_size,),) = con.execute(
        "SELECT block_size FROM pragma_database_size() WHERE database_name = current_database()"
    ).fetchall()
    con.close()
    used = sorted({b for (b,) in blocks if b is not None and b >= 0})
    assert used, "no sample blocks"
    _overwrite(4096 * 3 + used[-1] * block_size + 100, 512)(db)
    with pytest.raises(StoreCorruptError, match="damaged"):
        Store(db)


def test_checkpoint_failing_on_a_full_disk_loses_nothing_committed(small_fs, monkeypatch):
    """A failed checkpoint invalidates DuckDB's instance: the writer reopens the file (which
    replays the WAL) and goes on; every committed tick is readable afterwards."""
    import agent.store_writer as writer

    monkeypatch.setattr(writer, "AGENT_DB_CHECKPOINT_BYTES", 1)  # checkpoint after each flush
    lines: list[str] = []
    store = Store(small_fs / "a.duckdb", flush_interval=0.1, report=lines.append)
    _run(store)
    store.start()
    store.submit("r", _tick(0, 50))
    assert wait_until(lambda: store.rows_written > 0)
    # room for WAL records, not for a new block
    filler = fill(small_fs, leave=NEW_FILE_BLOCK_SIZE * 3 // 8)
    for i in range(1, 40):
        store.submit("r", _tick(i, 50))
        time.sleep(0.03)
    assert wait_until(lambda: store.failures > 0, timeout=10)
    filler.unlink()
    assert wait_until(lambda: store.state == "ok" and store.buffered_ticks == 0, timeout=20), (
        store.state,
        store.last_error,
    )
    store.close()
    from tests.helpers import query

    assert query(store.path, "SELECT count(DISTINCT ts) FROM samples")[0][0] == 40
    assert store.lost_ticks == 0
    assert store.reopens >= 1, "the checkpoint never failed: nothing was tested"


# -- a 500-process tree under the agent's memory cap ---------------------------------------

TREE_JOB = """
import os, signal, sys, time
kids = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    kids.append(pid)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
for pid in kids:
    os.kill(pid, signal.SIGKILL)
for pid in kids:
    os.waitpid(pid, 0)
"""


def test_500_process_tree_with_live_analysis_loses_no_tick(tmp_path):
    from agent.analysis.live import LiveAnalysis
    from agent.app.session import Session, SessionConfig
    from agent.store import connect

    job = tmp_path / "tree.py"
    job.write_text(TREE_JOB)
    session = Session(SessionConfig(db_path=str(tmp_path / "a.duckdb"), interval=0.5))
    session.launch([sys.executable, str(job), "500", "10"])
    (live,) = [c for c in session.consumers if isinstance(c, LiveAnalysis)]
    assert live.schedule is not None
    live.schedule.full_period_s = 1.0  # a full pass every second, whatever it costs
    live.schedule.full_pass_every_rule = True
    assert wait_until(lambda: len(session.process_collector.pids) > 500, timeout=20)
    session.wait()
    run = session.finish()
    assert run.status == "finished"
    assert session.store.lost_ticks == 0 and session.store.failures == 0, session.store.health()
    assert live.cycles + live.oom_passes >= 3, live.context.health
    assert live.last_error is None, live.last_error
    con = connect(session.store.path, read_only=True)  # the file is whole and readable
    try:
        ticks = con.execute("SELECT count(DISTINCT ts) FROM samples").fetchone()[0]
        procs = con.execute(
            "SELECT max(n) FROM (SELECT count(DISTINCT entity) n FROM samples "
            "WHERE source = 'process' GROUP BY ts)"
        ).fetchone()[0]
        (detail,) = con.execute("SELECT detail FROM events WHERE kind = 'run_end'").fetchone()
    finally:
        con.close()
    assert ticks == session.sampler.stats.ticks
    assert procs > 500
    assert '"lost_ticks": 0' in detail


# -- kill -9 of the agent ------------------------------------------------------------------


def test_kill_9_of_a_recording_agent_reads_as_lost_with_its_last_sample(tmp_path):
    import json
    import signal

    from tests.helpers import query, run_cli

    db = tmp_path / "a.duckdb"
    agent = _record(db, 60, exit_code=0)
    lines = _stderr_lines(agent)
    ticks = 15 + round(DEFAULT_FLUSH_INTERVAL / 0.1)  # past the first flush
    assert wait_until(lambda: sum("procs=" in ln for ln in lines) >= ticks, timeout=30), lines
    import psutil

    job = psutil.Process(agent.pid).children()
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    for child in job:  # the orphaned job, by pid
        child.kill()
    listed = run_cli("runs", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    assert run["status"] == "lost", run
    ((recorded, pid, beat),) = query(db, "SELECT status, agent_pid, last_sample FROM runs")
    assert (recorded, pid) == ("running", agent.pid)
    ((newest,),) = query(db, "SELECT max(ts) FROM samples")
    # the heartbeat's last_sample trails by at most a beat; readers show the newest sample
    assert beat is not None and 0 <= (newest - beat).total_seconds() <= HEARTBEAT_EVERY_S + 2
    # --json timestamps are ISO 8601 with their UTC offset
    assert datetime.fromisoformat(run["last_sample"]).replace(tzinfo=None) == newest


def test_new_database_on_a_full_disk_is_one_line_and_the_job_never_starts(small_fs, tmp_path):
    from tests.helpers import run_cli

    filler = fill(small_fs)
    marker = tmp_path / "job-started"
    done = run_cli("run", "--db", str(small_fs / "new.duckdb"), "--headless", "--",
                   "touch", str(marker))  # fmt: skip
    filler.unlink()
    assert done.returncode == 4, done.stderr
    assert done.stderr.count("\n") == 1 and "no space left" in done.stderr, done.stderr
    assert not marker.exists()
    assert sorted(os.listdir(small_fs)) == [], "a half-made database was left behind"
