"""Test helpers: the CLI as a subprocess, a job with real workers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "train.py"

#: A job with a main process and two multiprocessing workers that burn some CPU.
WORKER_JOB = textwrap.dedent(
    """
    import multiprocessing as mp, sys, time

    def work(seconds):
        # a quarter of a core each (5 ms of arithmetic, 15 ms asleep): real CPU for the agent
        # to account, without the job starving the agent and the rest of the suite on 2 cores
        end = time.time() + seconds
        x = 0
        while time.time() < end:
            burst = time.perf_counter() + 0.005
            while time.perf_counter() < burst:
                x += sum(i * i for i in range(500))
            time.sleep(0.015)

    if __name__ == "__main__":
        seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=work, args=(seconds,)) for _ in range(2)]
        for p in procs:
            p.start()
        print("ready", flush=True)
        work(seconds / 2)
        for p in procs:
            p.join()
    """
)


def xid_scenario(at_s: int) -> str:
    """A simulator scenario: two healthy H100s, XID 94 (a contained ECC error) on GPU 1 at
    ``at_s``: a fault the live analysis flags at once."""
    return f"""
summary = "two healthy H100s; XID 94 on GPU 1 at {at_s} s"
seed = 3
duration_s = 60

[hardware]
model = "h100-sxm-80gb"
count = 2

[workload]
busy = 0.97
memory_used_gib = 62.0
temperature_c = 67.0

[[effects]]
label = "contained ECC error"
gpus = [1]
at_s = {at_s}
xid = 94
"""


def accelwatch(*args: str) -> list[str]:
    """The CLI as a subprocess command line, from this interpreter."""
    return [sys.executable, "-m", "agent", *args]


def run_cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ACCELWATCH_DB": os.environ.get("ACCELWATCH_DB", "")}
    env.pop("ACCELWATCH_DB")
    return subprocess.run(
        accelwatch(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, **kw.pop("env", {})},
        **kw,
    )


#: The TPU runtime scrape's deadline in tests that check values, not deadlines: generous, so
#: a loaded machine cannot turn a slow answer into a missing one (no scenario slows the
#: simulated runtime; the deadline tests pass their own).
VALUES_DEADLINE_S = 5.0


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def query(db, sql: str, *params):
    """Rows of ``sql`` on a recorded database, opened read-only and closed again."""
    from agent.store import connect

    con = connect(db, read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` (dedented) in a fresh interpreter of this venv: what a process loads or keeps
    resident is only seen in a process of its own."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
