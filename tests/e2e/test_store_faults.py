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
from pathlib import Path

import pytest

from agent.store import Store
from tests.helpers import REPO, accelwatch, wait_until

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _modes(directory: Path) -> dict[str, int]:
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            p = Path(root, name)
            with _suppress_gone():
                out[str(p.relative_to(directory))] = stat.S_IMODE(p.lstat().st_mode)
    return out


class _suppress_gone:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, FileNotFoundError)


def _assert_private(modes: dict[str, int], directory: Path) -> None:
    for name, mode in modes.items():
        want = 0o700 if (directory / name).is_dir() else 0o600
        assert mode == want, f"{name} is {oct(mode)}, want {oct(want)}"


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
            "run", "--db", str(db), "--headless", "--interval", "0.1", "--",
            sys.executable, "-c", "import sys, time; time.sleep(4)", secret,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )  # fmt: skip
    try:
        wal = db.with_name(db.name + ".wal")
        holds_secret = lambda: wal.exists() and b"hunter2" in wal.read_bytes()  # noqa: E731
        assert wait_until(holds_secret, timeout=15), "the WAL never held the command line"
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
