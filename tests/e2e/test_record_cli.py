"""`accelwatch run` / `attach` on real processes with real workers, read back from DuckDB."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from agent.store import DEFAULT_FLUSH_INTERVAL
from tests.helpers import EXAMPLE, accelwatch, query, run_cli, wait_until


def test_run_records_the_example_job_and_its_loader_workers(tmp_path):
    db = tmp_path / "run.duckdb"
    result = run_cli(
        "run",
        "--db",
        str(db),
        "--headless",
        "--interval",
        "0.2",
        "--name",
        "example",
        "--tag",
        "team=ml",
        "--",
        sys.executable,
        str(EXAMPLE),
        "--steps",
        "40",
        "--workers",
        "2",
        env={"RANK": "0", "WORLD_SIZE": "1", "SECRET_TOKEN": "hunter2"},
    )
    assert result.returncode == 0, result.stderr
    assert "step 40/40" in result.stdout
    [(run_id, name, status, exit_code, tags, env, pid)] = query(
        db, "SELECT run_id, name, status, exit_code, tags, env, pid FROM runs"
    )
    assert (name, status, exit_code) == ("example", "finished", 0)
    assert json.loads(tags) == {"team": "ml"}
    assert json.loads(env) == {"RANK": "0", "WORLD_SIZE": "1"}
    procs = {
        int(e): json.loads(a)
        for e, a in query(db, "SELECT entity, attrs FROM entities WHERE source='process'")
    }
    workers = [p for p in procs.values() if p["ppid"] == pid and p["role"] == "worker"]
    assert procs[pid]["role"] == "main"
    assert len(workers) >= 2, procs  # the two loader workers (and the spawn resource tracker)
    sampled = {
        int(r[0]) for r in query(db, "SELECT DISTINCT entity FROM samples WHERE source='process'")
    }
    assert {w["pid"] for w in workers} <= sampled
    host_metrics = {
        r[0] for r in query(db, "SELECT DISTINCT metric FROM samples WHERE source='host'")
    }
    assert {
        "host.cpu.utilization",
        "host.cpu.iowait",
        "host.memory.used",
        "host.load.1m",
    } <= host_metrics
    assert "hunter2" not in db.read_bytes().decode("latin-1")


def test_attach_follows_workers_and_cpu_matches_proc(tmp_path, worker_job):
    job = worker_job(seconds=30.0)
    db = tmp_path / "attach.duckdb"
    agent = subprocess.Popen(
        accelwatch("attach", str(job.pid), "--db", str(db), "--headless", "--interval", "0.2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tree = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    ppids = {p.pid: p.ppid() for p in tree}
    agent.stderr.readline()  # the first live line: recording has started
    time.sleep(1.0)
    for p in tree:  # freeze the job so /proc's CPU seconds stop moving
        p.suspend()
    truth = {p.pid: sum(p.cpu_times()[:2]) for p in tree}
    time.sleep(1.0)  # let the agent take a few samples of the frozen tree
    agent.send_signal(signal.SIGINT)
    _, err = agent.communicate(timeout=30)
    for p in tree:
        p.resume()
    assert agent.returncode == 0, err
    rows = query(
        db,
        """
        SELECT entity, arg_max(value, ts) FILTER (metric = 'process.cpu.user')
               + arg_max(value, ts) FILTER (metric = 'process.cpu.system')
        FROM samples WHERE source = 'process' GROUP BY entity""",
    )
    recorded = {int(e): v for e, v in rows}
    assert set(truth) <= set(recorded)
    for pid, seconds in truth.items():
        assert recorded[pid] == pytest.approx(seconds, abs=0.02), pid
    assert sum(truth.values()) > 0.4  # the workers really burned CPU
    parents = dict(
        query(
            db,
            "SELECT entity, json_extract(attrs, '$.ppid')::INT FROM entities "
            "WHERE source='process'",
        )
    )
    for pid, ppid in ppids.items():
        if pid != job.pid:
            assert parents[str(pid)] == ppid
    roles = dict(
        query(
            db,
            "SELECT entity, json_extract_string(attrs, '$.role') FROM entities "
            "WHERE source='process'",
        )
    )
    assert roles[str(job.pid)] == "main"
    assert sum(1 for r in roles.values() if r == "worker") >= 2


def _gone_or_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_target_exit_ends_the_run_and_closes_exited_workers(tmp_path, worker_job):
    job = worker_job(seconds=60.0)
    db = tmp_path / "exit.duckdb"
    agent = subprocess.Popen(
        accelwatch("attach", str(job.pid), "--db", str(db), "--headless", "--interval", "0.2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    agent.stderr.readline()  # recording has started
    # the job's two workers (not multiprocessing's resource tracker, which ignores SIGTERM)
    workers = [
        w
        for w in psutil.Process(job.pid).children(recursive=True)
        if "spawn_main" in " ".join(w.cmdline())
    ]
    assert len(workers) == 2
    for w in workers:
        w.terminate()
    # the job reaps them only when it joins: until then they are zombies, as good as gone
    assert wait_until(lambda: all(_gone_or_zombie(w) for w in workers), timeout=10)
    time.sleep(0.6)  # a few ticks see the workers gone
    job.terminate()
    _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert query(db, "SELECT status FROM runs") == [("finished",)]
    exited = {e for (e,) in query(db, "SELECT entity FROM events WHERE kind='process_exit'")}
    assert {str(w.pid) for w in workers} <= exited


def test_run_forwards_exit_code(tmp_path):
    db = tmp_path / "x.duckdb"
    result = run_cli(
        "run",
        "--db",
        str(db),
        "--headless",
        "--interval",
        "0.1",
        "--",
        sys.executable,
        "-c",
        "import sys, time; time.sleep(0.3); sys.exit(7)",
    )
    assert result.returncode == 7
    assert query(db, "SELECT exit_code, status FROM runs") == [(7, "finished")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_agent_stops_attach_and_finalizes_the_run(tmp_path, worker_job, sig):
    job = worker_job(seconds=30.0)
    db = tmp_path / "s.duckdb"
    agent = subprocess.Popen(
        accelwatch("attach", str(job.pid), "--db", str(db), "--headless", "--interval", "0.2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    agent.stderr.readline()  # the first live line: recording has started
    time.sleep(0.5)
    agent.send_signal(sig)
    agent.communicate(timeout=20)
    assert agent.returncode == 0
    assert job.poll() is None, "the watched job must survive the agent's stop"
    [(status, ended)] = query(db, "SELECT status, ended FROM runs")
    assert status == "stopped" and ended is not None
    assert query(db, "SELECT count(*) FROM samples")[0][0] > 0
    assert query(db, "SELECT count(*) FROM events WHERE kind='signal'")[0][0] == 1


def test_sigterm_to_agent_is_forwarded_to_run_command(tmp_path):
    db = tmp_path / "f.duckdb"
    agent = subprocess.Popen(
        accelwatch(
            "run",
            "--db",
            str(db),
            "--headless",
            "--interval",
            "0.2",
            "--",
            sys.executable,
            "-c",
            "import time; print('up', flush=True); time.sleep(60)",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert agent.stdout.readline().strip() == "up"
    time.sleep(0.5)
    agent.send_signal(signal.SIGTERM)
    agent.communicate(timeout=20)
    assert agent.returncode == 128 + signal.SIGTERM
    assert query(db, "SELECT status, exit_code FROM runs") == [("finished", 143)]


def test_kill_9_of_agent_keeps_flushed_samples(tmp_path, worker_job):
    job = worker_job(seconds=30.0)
    db = tmp_path / "k.duckdb"
    agent = subprocess.Popen(
        accelwatch(
            "attach", str(job.pid), "--db", str(db), "--headless", "--interval", "0.2",
            "--live-every", "0.2",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    for lines, _ in enumerate(agent.stderr, start=1):  # one live line per tick
        if lines >= 25:
            break
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()
    ticks = query(db, "SELECT count(DISTINCT ts) FROM samples WHERE source='host'")[0][0]
    # at most the last flush interval (DEFAULT_FLUSH_INTERVAL: 10 ticks of 0.2 s) is lost
    assert ticks >= 25 - round(DEFAULT_FLUSH_INTERVAL / 0.2) - 1
    assert query(db, "SELECT status FROM runs") == [("running",)]


def test_attach_duration_and_runs_listing(tmp_path, worker_job):
    job = worker_job(seconds=30.0)
    db = tmp_path / "d.duckdb"
    started = time.monotonic()
    result = run_cli(
        "attach",
        str(job.pid),
        "--db",
        str(db),
        "--headless",
        "--interval",
        "0.2",
        "--duration",
        "1",
        "--name",
        "dur",
    )
    assert result.returncode == 0, result.stderr
    # --duration ended the recording, not the job's exit (the job trains for 30 s): checked on
    # the job and on the recorded span, not on wall time, which a loaded machine stretches.
    assert job.poll() is None or time.monotonic() - started < 30
    listed = run_cli("runs", "--db", str(db), "--json")
    [run] = json.loads(listed.stdout)
    assert run["name"] == "dur" and run["status"] == "stopped" and run["mode"] == "attach"
    assert 0.8 <= run["duration_s"] < 5, run["duration_s"]


# -- bad input: one line on stderr, non-zero exit, nothing lost


def _one_line_error(result, code, fragment):
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_unknown_pid(tmp_path):
    pid = 4_000_000
    assert not psutil.pid_exists(pid)
    _one_line_error(
        run_cli("attach", str(pid), "--db", str(tmp_path / "a.duckdb")), 3, "no process with pid"
    )
    assert not (tmp_path / "a.duckdb").exists()  # a failed start creates nothing


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_bad_interval(tmp_path, value):
    result = run_cli(
        "attach", str(os.getpid()), "--interval", value, "--db", str(tmp_path / "a.duckdb")
    )
    assert result.returncode == 2
    assert "--interval" in result.stderr.strip().splitlines()[-1]


def test_bad_tag_and_missing_command(tmp_path):
    assert run_cli("run", "--tag", "novalue", "--", "true").returncode == 2
    _one_line_error(run_cli("run", "--db", str(tmp_path / "a.duckdb")), 2, "needs a command")


def test_unwritable_db_path(tmp_path):
    _one_line_error(
        run_cli("attach", str(os.getpid()), "--db", "/proc/nope/a.duckdb"), 4, "cannot create"
    )


def test_corrupt_db_is_refused_and_kept(tmp_path):
    db = tmp_path / "notes.duckdb"
    db.write_text("not a database\n" * 100)
    before = db.read_bytes()
    _one_line_error(run_cli("attach", str(os.getpid()), "--db", str(db)), 4, "refusing")
    assert db.read_bytes() == before


def test_second_agent_on_same_db(tmp_path, worker_job):
    job = worker_job(seconds=30.0)
    db = tmp_path / "busy.duckdb"
    first = subprocess.Popen(
        accelwatch("attach", str(job.pid), "--db", str(db), "--headless"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first.stderr.readline()
        _one_line_error(run_cli("attach", str(job.pid), "--db", str(db)), 4, "in use")
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=20)
    assert query(db, "SELECT status FROM runs") == [("stopped",)]


def test_pid_that_already_exited(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE)
    try:
        _one_line_error(
            run_cli("attach", str(child.pid), "--db", str(tmp_path / "z.duckdb")),
            3,
            "already exited",
        )
    finally:
        child.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the agent as another user")
def test_pid_of_another_user(tmp_path):
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not available")
    import tempfile

    shared = tempfile.mkdtemp(prefix="accelwatch-user-")
    os.chmod(shared, 0o777)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *accelwatch("attach", "1", "--db", os.path.join(shared, "u.duckdb")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": repo, "HOME": shared},
    )
    assert result.returncode == 3, result.stderr
    assert "another user" in result.stderr or "permission denied" in result.stderr


def test_help_imports_neither_duckdb_nor_textual():
    code = (
        "import sys\nfrom agent.app.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nprint(sorted(m for m in ('duckdb', 'textual', "
        "'opentelemetry', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
