"""The job comes first: signals from the live UI, a closed terminal, a full disk, bad options.

Real processes throughout: the CLI in a tmux terminal (``tests.tui.test_cli_tui.Terminal``), a
job that writes down every signal it receives, a real tmpfs, a real taken port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import accelwatch, query, run_cli, wait_until

#: A job that appends each signal it gets to SIGNALS, then exits 0 ("handle") or goes on
#: ("ignore"); "seconds=N" prints a line every 0.1 s for N seconds and exits 0.
JOB = textwrap.dedent(
    """
    import os, signal, sys, time
    mode, signals = sys.argv[1], sys.argv[2]
    got = []
    def note(signum, _frame):
        got.append(signum)
        with open(signals, "a") as out:
            out.write(signal.Signals(signum).name + "\\n")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, note)
    print("job up", os.getpid(), flush=True)
    end = time.time() + float(mode.split("=")[1]) if mode.startswith("seconds=") else None
    tick = 0
    while True:
        time.sleep(0.1)
        tick += 1
        if end is not None:
            print("tick", tick, flush=True)
            if time.time() > end:
                print("job done", flush=True)
                sys.exit(0)
        if mode == "handle" and got:
            print("job stopping cleanly", flush=True)
            sys.exit(0)
    """
)

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@pytest.fixture
def job(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    signals = tmp_path / "signals.txt"

    def command(mode: str) -> list[str]:
        return [sys.executable, str(script), mode, str(signals)]

    command.signals = signals  # type: ignore[attr-defined]
    return command


def received(signals: Path) -> list[str]:
    return signals.read_text().split() if signals.exists() else []


def terminal(*args: str):
    from tests.tui.test_cli_tui import Terminal

    return Terminal(accelwatch(*args), {"TERM": "xterm-256color"})


def job_pid(db: Path) -> int | None:
    """The launched job's pid, from its first "job up" line in the log beside ``db``."""
    for log in db.parent.glob(f"{db.stem}-job-*.log"):
        for line in log.read_text().splitlines():
            if line.startswith("job up"):
                return int(line.split()[2])
    return None


def agent_process(db: Path) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if str(db) in cmdline and "agent" in cmdline:
            return proc
    return None


def run_row(db: Path):
    return query(db, "SELECT status, exit_code FROM runs")[0]


def ui_run(db: Path, *extra: str) -> list[str]:
    return ["run", "--db", str(db), "--interval", "0.2", *extra, "--"]


# -- signals from the live UI


@needs_tmux
def test_ctrl_c_in_the_ui_sends_sigint_and_the_run_ends_with_the_jobs_own_exit(tmp_path, job):
    db = tmp_path / "int.duckdb"
    term = terminal(*ui_run(db), *job("handle"))
    try:
        term.wait_for("q Quit")
        assert wait_until(lambda: job_pid(db) is not None, timeout=10)
        term.send("C-c")
        screen = term.wait_for("EXIT=", timeout=30)
    finally:
        term.close()
    assert received(job.signals) == ["SIGINT"]
    assert "EXIT=0" in screen, screen
    assert run_row(db) == ("finished", 0)
    log = next(tmp_path.glob("int-job-*.log")).read_text()
    assert "job stopping cleanly" in log


@needs_tmux
def test_second_ctrl_c_sends_sigterm_and_sigkill_waits_for_the_stop_timeout(tmp_path, job):
    db = tmp_path / "esc.duckdb"
    term = terminal(*ui_run(db, "--stop-timeout", "3"), *job("ignore"))
    try:
        term.wait_for("q Quit")
        assert wait_until(lambda: job_pid(db) is not None, timeout=10)
        pid = job_pid(db)
        term.send("C-c")
        assert wait_until(lambda: received(job.signals) == ["SIGINT"], timeout=5)
        term.send("C-c")
        assert wait_until(lambda: received(job.signals) == ["SIGINT", "SIGTERM"], timeout=5)
        asked = time.monotonic()
        term.send("C-c")  # before the grace: refused, said on screen
        term.wait_for("to send SIGKILL", timeout=5)
        time.sleep(1.0)
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        time.sleep(max(0.0, 3.2 - (time.monotonic() - asked)))
        term.send("C-c")  # after the grace: the explicit kill
        screen = term.wait_for("EXIT=", timeout=30)
    finally:
        term.close()
    assert "EXIT=137" in screen, screen
    assert run_row(db) == ("finished", 137)
    kinds = query(db, "SELECT detail FROM events WHERE kind = 'job_signal' ORDER BY ts")
    assert [json.loads(d)["signal"] for (d,) in kinds] == ["SIGINT", "SIGTERM", "SIGKILL"]


@needs_tmux
def test_q_then_detach_closes_the_ui_and_records_until_the_job_exits(tmp_path, job):
    db = tmp_path / "det.duckdb"
    term = terminal(*ui_run(db), *job("seconds=6"))
    try:
        term.wait_for("q Quit")
        term.send("q")
        term.wait_for("still running")
        term.send("d")
        screen = term.wait_for("detached: recording pid")
        assert "EXIT=" not in screen
        assert query_status_while_locked(db) is None  # still recording: the agent holds it
        screen = term.wait_for("EXIT=", timeout=40)
    finally:
        term.close()
    assert "EXIT=0" in screen, screen
    assert received(job.signals) == []
    assert run_row(db) == ("finished", 0)
    log = next(tmp_path.glob("det-job-*.log")).read_text()
    assert "job done" in log  # printed long after the UI closed
    ended, started = query(db, "SELECT epoch(ended), epoch(started) FROM runs")[0]
    assert ended - started > 5.5


def query_status_while_locked(db: Path):
    try:
        return query(db, "SELECT status FROM runs")
    except Exception:  # the recording agent holds the file
        return None


@needs_tmux
def test_q_then_stop_sends_sigint_and_waits_for_the_job(tmp_path, job):
    db = tmp_path / "stop.duckdb"
    term = terminal(*ui_run(db), *job("handle"))
    try:
        term.wait_for("q Quit")
        term.send("q")
        term.wait_for("still running")
        term.send("s")
        screen = term.wait_for("EXIT=", timeout=30)
    finally:
        term.close()
    assert received(job.signals) == ["SIGINT"]
    assert "EXIT=0" in screen, screen
    assert run_row(db) == ("finished", 0)


# -- a closed terminal


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


@needs_tmux
def test_closed_terminal_forwards_sighup_finalizes_the_run_and_leaves_no_agent(tmp_path, job):
    db = tmp_path / "hup.duckdb"
    term = terminal(*ui_run(db), *job("handle"))
    try:
        term.wait_for("q Quit")
        agent = agent_process(db)
        assert agent is not None
        before = _cpu_seconds(agent)
    finally:
        term.close()  # kill-server: the pty closes, the kernel sends SIGHUP
    closed = time.monotonic()
    used = 0.0
    while time.monotonic() - closed < 8:
        try:
            used = _cpu_seconds(agent) - before
        except psutil.NoSuchProcess:
            break
        if agent.status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"agent still alive 8 s after the terminal closed ({used:.1f} CPU s)")
    assert used < 1.5, f"the agent used {used:.1f} CPU s after the hangup"
    assert received(job.signals) == ["SIGHUP"]
    assert run_row(db) == ("finished", 0)
    from agent.store import connect

    connect(db).close()  # the lock is released: a writer may open it


# -- a full disk


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")


def test_job_keeps_printing_when_its_log_disk_is_full_and_drops_are_counted(tmp_path):
    from agent.app.session import Session, SessionConfig

    full = tmp_path / "full"
    _mount_tmpfs(full, "1m")
    try:
        log = full / "job.log"
        session = Session(
            SessionConfig(
                db_path=str(tmp_path / "full.duckdb"),
                interval=0.2,
                job_log=str(log),
                live_analysis=False,
            )
        )
        code = "import sys\nfor i in range(40000): print('x' * 99, i)\nprint('job done')"
        started = time.monotonic()
        session.launch([sys.executable, "-c", code])
        session.wait()
        run = session.finish()
        took = time.monotonic() - started
        assert stat_mode(log) == 0o600
    finally:
        subprocess.run(["umount", str(full)], check=False)
    assert (run.exit_code, run.status) == (0, "finished")  # 4 MB printed into a 1 MB disk
    assert took < 30
    assert session.pump is not None and session.pump.bytes_dropped > 2_000_000
    db = tmp_path / "full.duckdb"
    [(detail,)] = query(db, "SELECT detail FROM events WHERE kind = 'job_output_dropped'")
    assert json.loads(detail)["reason"] == "disk full"
    [(end,)] = query(db, "SELECT detail FROM events WHERE kind = 'run_end'")
    assert json.loads(end)["job_output.bytes_dropped"] == session.pump.bytes_dropped


def stat_mode(path: Path) -> int:
    import stat

    return stat.S_IMODE(os.stat(path).st_mode)


def test_job_output_pipe_is_drained_while_the_ui_owns_the_terminal(tmp_path):
    """A job printing far more than a pipe holds (64 KiB) is never blocked by the agent."""
    from agent.app.session import Session, SessionConfig

    log = tmp_path / "big.log"
    session = Session(
        SessionConfig(
            db_path=str(tmp_path / "big.duckdb"),
            interval=0.2,
            job_log=str(log),
            live_analysis=False,
        )
    )
    code = "import sys\nfor i in range(20000): sys.stdout.write(f'line {i}\\n')\nprint('end')"
    session.launch([sys.executable, "-c", code])
    session.wait()
    run = session.finish()
    assert run.exit_code == 0
    lines = log.read_text().splitlines()
    assert lines[-1] == "end" and len(lines) == 20001
    assert session.pump.bytes_dropped == 0


# -- bad options: refused before the job starts


def _marker_job(tmp_path: Path) -> tuple[list[str], Path]:
    marker = tmp_path / "job-started"
    return [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], marker


def _one_line(result, code: int, fragment: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_taken_prometheus_port_is_refused_before_the_job_starts(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    command, marker = _marker_job(tmp_path)
    db = tmp_path / "p.duckdb"
    try:
        result = run_cli(
            "run", "--db", str(db), "--headless", "--prometheus", str(port), "--", *command
        )
    finally:
        taken.close()
    _one_line(result, 2, str(port))
    time.sleep(0.3)
    assert not marker.exists(), "the job was started"
    assert not db.exists(), "a refused start leaves no database behind"


def test_bad_otlp_endpoint_is_one_usage_line_and_the_job_never_starts(tmp_path):
    command, marker = _marker_job(tmp_path)
    result = run_cli(
        "run", "--db", str(tmp_path / "o.duckdb"), "--headless", "--otlp", "not a url::", "--",
        *command,
    )  # fmt: skip
    _one_line(result, 2, "--otlp")
    assert result.stderr.startswith("accelwatch: error:")
    assert not marker.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--interval", "0", "--", "true"],
        ["attach", "notapid"],
        ["report", "--format", "pdf"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_are_one_line(args):
    result = run_cli(*args)
    _one_line(result, 2, "accelwatch: error:")


# -- the environment allow-list


def test_secret_environment_keys_never_reach_runs_env(tmp_path):
    db = tmp_path / "env.duckdb"
    allowed = {"RANK": "1", "SLURM_JOB_ID": "77", "SLURM_PROCID": "1", "TPU_WORKER_ID": "0"}
    secrets = {
        "SLURM_JWT": "eyJ.secret",
        "SLURM_AUTH_TOKEN": "x",
        "TPU_API_TOKEN": "x",
        "HF_TOKEN": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    result = run_cli(
        "run", "--db", str(db), "--headless", "--interval", "0.2", "--",
        sys.executable, "-c", "import time; time.sleep(0.5)",
        env={**allowed, **secrets},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [(env,)] = query(db, "SELECT env FROM runs")
    assert json.loads(env) == allowed


def test_headless_sigterm_is_forwarded_and_a_second_one_escalates_without_sigkill(tmp_path, job):
    db = tmp_path / "hl.duckdb"
    agent = subprocess.Popen(
        accelwatch("run", "--db", str(db), "--headless", "--interval", "0.2", "--", *job("ignore")),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        pid = int(agent.stdout.readline().split()[2])
        agent.send_signal(signal.SIGTERM)
        assert wait_until(lambda: received(job.signals) == ["SIGTERM"], timeout=5)
        agent.send_signal(signal.SIGINT)
        assert wait_until(lambda: received(job.signals) == ["SIGTERM", "SIGTERM"], timeout=5)
        time.sleep(1.5)
        assert agent.poll() is None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    finally:
        if agent.poll() is None:
            os.kill(pid, signal.SIGKILL)  # the test, not the agent, ends the ignoring job
        agent.communicate(timeout=20)
    assert agent.returncode == 137
    assert run_row(db) == ("finished", 137)


def test_promises_page_states_the_documented_grace_and_names_its_tests():
    from agent.app.job import DEFAULT_STOP_TIMEOUT_S
    from tests.helpers import REPO

    page = (REPO / "docs" / "promises.md").read_text()
    for heading in ("## The job's signals", "## The job's output", "## Environment keys read"):
        assert heading in page
    assert f"default **{DEFAULT_STOP_TIMEOUT_S:g}**" in page
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", page))
    defined = {
        n
        for f in (REPO / "tests").rglob("test_*.py")
        for n in re.findall(r"def (test_\w+)\(", f.read_text())
    }
    assert len(named) >= 10 and named <= defined, sorted(named - defined)


def test_a_job_that_ends_at_once_still_has_its_command_env_and_cwd_recorded(tmp_path):
    """``run`` knows what it launched: nothing of it depends on reading /proc in time."""
    db = tmp_path / "quick.duckdb"
    result = run_cli(
        "run", "--db", str(db), "--headless", "--interval", "0.2", "--", "true",
        env={"RANK": "3", "HF_TOKEN": "x"}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [(cmdline, env, cwd)] = query(db, "SELECT cmdline, env, cwd FROM runs")
    assert "true" in str(cmdline) and json.loads(env) == {"RANK": "3"}
    assert cwd == str(tmp_path)
