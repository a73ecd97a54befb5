"""The client from real training scripts under a real ``accelwatch run``."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import duckdb

from agent.identity import identity
from tests.helpers import EXAMPLE, run_cli
from tests.tracking.conftest import PYTHON, child_env, script


def _query(db, sql, params=()):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def test_training_script_with_loader_workers_lands_steps_and_metrics_in_the_run(
    tmp_path, runtime_dir
):
    db = tmp_path / "run.duckdb"
    out = run_cli(
        "run", "--db", str(db), "--interval", "0.5", "--", PYTHON, str(EXAMPLE),
        "--steps", "25", "--workers", "2", "--load-delay", "0.01", "--features", "64",
        env=child_env(ACCELWATCH_RUNTIME_DIR=runtime_dir),
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (run_id,) = _query(db, "SELECT run_id FROM runs")[0]
    steps = dict(
        _query(db, "SELECT metric, count(*) FROM samples WHERE source = 'steps' GROUP BY 1")
    )
    assert steps["step.time"] == 24  # the first step() starts the clock
    assert _query(db, "SELECT max(value) FROM samples WHERE metric = 'step.count'") == [(25.0,)]
    loss = _query(db, "SELECT step, value FROM train_metrics WHERE name = 'loss' ORDER BY step")
    assert [s for s, _ in loss] == list(range(1, 26)) and all(v >= 0 for _, v in loss)
    config = dict(_query(db, "SELECT key, value FROM run_config WHERE run_id = ?", [run_id]))
    assert json.loads(config["workers"]) == 2 and json.loads(config["lr"]) == 0.01
    (attrs,) = _query(db, "SELECT attrs FROM entities WHERE source = 'steps'")[0]
    assert json.loads(attrs)["pid"] > 0
    assert not os.path.exists(runtime_dir) or not os.listdir(runtime_dir)  # socket removed


TORCHRUN = """
import os, subprocess, sys
n = int(sys.argv[1])
ranks = [
    subprocess.Popen([sys.executable, sys.argv[2]],
                     env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r),
                          "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n)})
    for r in range(n)
]
sys.exit(max(p.wait() for p in ranks))
"""

RANK = """
import os, time, accelwatch
rank = int(os.environ["RANK"])
accelwatch.config(lr=0.1)
for i in range(12):
    time.sleep(0.02 * (1 + rank))  # rank 3 is the slowest
    accelwatch.log(loss=1.0 / (i + 1))
    accelwatch.step()
"""


def test_ranks_started_by_a_launcher_are_ranks_of_one_run(tmp_path, runtime_dir):
    """``torchrun --nproc-per-node 4`` under one ``accelwatch run``: 4 ranks in one run."""
    db = tmp_path / "ranks.duckdb"
    launcher = script(tmp_path, TORCHRUN, "launcher.py")
    rank = script(tmp_path, RANK, "rank.py")
    out = run_cli(
        "run", "--db", str(db), "--interval", "0.5", "--", PYTHON, str(launcher), "4", str(rank),
        env=child_env(ACCELWATCH_RUNTIME_DIR=runtime_dir, SLURM_JOB_ID="77", SLURM_NODEID="0"),
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(_query(db, "SELECT run_id FROM runs")) == 1
    means = dict(
        _query(
            db,
            "SELECT entity, avg(value) FROM samples WHERE metric = 'step.time' GROUP BY 1",
        )
    )
    assert sorted(means) == ["rank0", "rank1", "rank2", "rank3"]
    # per-rank step times, as each rank saw them: rank 3 sleeps 60 ms more a step than rank 0;
    # a loaded machine adds to both, so the gap is asserted, not the ratio
    assert means["rank3"] - means["rank0"] > 0.03, means
    attrs = {
        e: json.loads(a)
        for e, a in _query(db, "SELECT entity, attrs FROM entities WHERE source = 'steps'")
    }
    assert attrs["rank2"]["rank"] == 2 and attrs["rank2"]["world_size"] == 4
    assert attrs["rank2"]["slurm_job_id"] == "77" and attrs["rank2"]["local_rank"] == 2
    ranks = _query(db, "SELECT DISTINCT rank FROM train_metrics ORDER BY 1")
    assert ranks == [(0,), (1,), (2,), (3,)]


def test_a_job_that_logs_and_exits_at_once_is_recorded_whole(tmp_path, runtime_dir):
    """The client's socket is bound before the job starts: a job that logs, steps and exits in
    a few milliseconds (before the agent's sources have started) loses nothing; it used to get
    ENOENT on every send and lose it all."""
    db = tmp_path / "short.duckdb"
    job = "import accelwatch; accelwatch.log(x=1.0); accelwatch.step(); accelwatch.step()"
    out = run_cli(
        "run", "--db", str(db), "--interval", "0.5", "--", PYTHON, "-c", job,
        env=child_env(ACCELWATCH_RUNTIME_DIR=runtime_dir), timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert _query(db, "SELECT name, value FROM train_metrics") == [("x", 1.0)]
    steps = _query(db, "SELECT metric, count(*) FROM samples WHERE source = 'steps' GROUP BY 1")
    assert sorted(steps) == [("step.count", 1), ("step.time", 1)]
    assert not os.path.exists(runtime_dir) or not os.listdir(runtime_dir)  # socket removed


TIMED = """
import json, os, sys, time, accelwatch
N = 20000
t0 = time.perf_counter()
for i in range(N):
    accelwatch.log(loss=1.0, lr=0.1, gn=2.0, acc=0.5, tok=9.0)
    if i % 16 == 0:
        accelwatch.step()
accelwatch.finish()
per_call = (time.perf_counter() - t0) / N
print(json.dumps({"per_call_us": per_call * 1e6, **accelwatch.stats()}))
"""


def _timed(tmp_path, **env) -> dict:
    job = script(tmp_path, TIMED, "timed.py")
    out = subprocess.run(
        [PYTHON, str(job)], capture_output=True, text=True, timeout=60, env=child_env(**env)
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_absent_dead_or_slow_agent_never_raises_into_or_slows_the_script(tmp_path, runtime_dir):
    os.makedirs(runtime_dir, mode=0o700)
    dead = os.path.join(runtime_dir, "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(dead)
    s.close()  # a socket file nobody reads from: an agent that was killed
    slow_path = os.path.join(runtime_dir, "slow.sock")
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    slow.bind(slow_path)  # bound, never read: its queue fills, sends get EAGAIN
    try:
        absent = _timed(tmp_path, ACCELWATCH_RUNTIME_DIR=runtime_dir)
        gone = _timed(tmp_path, ACCELWATCH_SOCKET=os.path.join(runtime_dir, "none.sock"))
        killed = _timed(tmp_path, ACCELWATCH_SOCKET=dead)
        stuck = _timed(tmp_path, ACCELWATCH_SOCKET=slow_path)
    finally:
        slow.close()
    assert absent["agent"] is None and absent["sent"] == 0
    assert gone["send_errors"].get("ENOENT") and gone["dropped"] > 0
    assert killed["send_errors"].get("ECONNREFUSED") and killed["dropped"] > 0
    assert stuck["send_errors"].get("EAGAIN") and stuck["dropped"] > 0
    # Never blocks: a send that waited on the socket would cost milliseconds per call. The
    # speed targets (a few microseconds) are benchmarks/bench_client.py's, not a timed test's.
    for case in (absent, gone, killed, stuck):
        assert case["per_call_us"] < 500, case


def test_offline_mode_records_a_run_that_reads_back(tmp_path, runtime_dir):
    db = tmp_path / "offline.duckdb"
    job = script(
        tmp_path,
        """
        import time, accelwatch
        accelwatch.config({"lr": 0.3, "model": {"depth": 4}})
        accelwatch.tag(dataset="toy")
        for i in range(10):
            time.sleep(0.01)
            accelwatch.log(loss=10.0 - i)
            accelwatch.step()
        """,
        "offline_job.py",
    )
    out = subprocess.run(
        [PYTHON, str(job)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(ACCELWATCH_MODE="offline", ACCELWATCH_DB=str(db)),
    )
    assert out.returncode == 0, out.stderr
    assert oct(os.stat(db).st_mode & 0o777) == "0o600"
    runs = run_cli("runs", "--db", str(db), "--json")
    assert runs.returncode == 0, runs.stderr
    (row,) = json.loads(runs.stdout)
    assert row["mode"] == "offline" and row["status"] == "finished"
    assert row["name"] == "offline_job.py"
    report = run_cli("report", "--db", str(db))
    assert report.returncode == 0, report.stderr
    assert _query(db, "SELECT count(*) FROM train_metrics") == [(10,)]
    assert _query(db, "SELECT count(*) FROM samples WHERE metric = 'step.time'") == [(9,)]
    config = dict(_query(db, "SELECT key, value FROM run_config"))
    assert config == {"lr": "0.3", "model.depth": "4"}
    assert _query(db, "SELECT key, value FROM run_tags") == [("dataset", '"toy"')]


def test_identity_from_torchrun_slurm_and_kubernetes_environments():
    torchrun = identity({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "GROUP_RANK": "2"})
    assert (torchrun["rank"], torchrun["local_rank"], torchrun["world_size"]) == (5, 1, 16)
    assert torchrun["node_rank"] == 2
    slurm = identity(
        {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "32", "SLURM_NODEID": "4",
         "SLURM_JOB_ID": "1234", "SLURMD_NODENAME": "gpu-017", "SLURM_NNODES": "8"}
    )  # fmt: skip
    assert (slurm["rank"], slurm["local_rank"], slurm["world_size"]) == (9, 1, 32)
    assert (slurm["node_rank"], slurm["node"], slurm["slurm_job_id"]) == (4, "gpu-017", "1234")
    both = identity({"RANK": "0", "SLURM_PROCID": "3"})  # torchrun under srun renumbers
    assert both["rank"] == 0 and both["slurm_procid"] == "3"
    k8s = identity(
        {"HOSTNAME": "trainer-worker-3", "POD_NAMESPACE": "ml", "JOB_COMPLETION_INDEX": "3"}
    )
    assert (k8s["node"], k8s["k8s_namespace"], k8s["k8s_job_index"]) == (
        "trainer-worker-3",
        "ml",
        "3",
    )
    assert identity({"RANK": "x"})["rank"] is None and identity({})["world_size"] is None


ATTACHED = """
import sys, time, accelwatch
accelwatch.config({"lr": 0.05})  # before any agent watches
accelwatch.tag(phase="warmup")
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    time.sleep(0.02)
    accelwatch.log(loss=0.5)
    accelwatch.step()
"""


def test_an_attached_agent_is_found_and_gets_the_config_set_before_it_came(tmp_path, runtime_dir):
    """``accelwatch attach PID``: the job finds the agent's socket for its pid within PROBE_S."""
    db = tmp_path / "attach.duckdb"
    job_path = script(tmp_path, ATTACHED, "attached.py")
    job = subprocess.Popen(
        [PYTHON, str(job_path), "9"],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(ACCELWATCH_RUNTIME_DIR=runtime_dir),
    )
    try:
        assert job.stdout is not None and job.stdout.readline().strip() == "ready"
        out = run_cli(
            "attach", str(job.pid), "--db", str(db), "--interval", "0.5", "--duration", "5",
            env={"ACCELWATCH_RUNTIME_DIR": runtime_dir},
            timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
    finally:
        job.wait(timeout=30)
    assert job.returncode == 0
    (count,) = _query(db, "SELECT count(*) FROM samples WHERE metric = 'step.time'")[0]
    assert count >= 20  # at least ~1.5 s of 50 steps/s after the client found the agent
    assert _query(db, "SELECT key, value FROM run_config") == [("lr", "0.05")]
    assert _query(db, "SELECT key, value FROM run_tags") == [("phase", '"warmup"')]
    (top,) = _query(db, "SELECT max(value) FROM samples WHERE metric = 'step.count'")[0]
    assert top > count  # steps before the agent came are counted, not timed
