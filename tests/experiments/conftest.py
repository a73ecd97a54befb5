"""Databases for the experiment commands: one real simulated recording (shared by the module
that asks for it), and fast Store-written runs with chosen numbers."""

from __future__ import annotations

import sys

import pytest

from tests.experiments.recordings import Recording, record
from tests.helpers import run_cli


@pytest.fixture(scope="session")
def simulated_db(tmp_path_factory):
    """A real ``accelwatch run --simulate healthy`` recording of a short job."""
    db = tmp_path_factory.mktemp("simulated") / "sim.duckdb"
    done = run_cli(
        "run", "--simulate", "healthy", "--headless", "--interval", "0.2", "--db", str(db),
        "--name", "sim-healthy", "--tag", "team=ml", "--",
        sys.executable, "-c", "import time; time.sleep(2)",
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return db


@pytest.fixture
def baseline_and_candidate(tmp_path):
    """Two runs in two databases: an input-bound baseline and a faster candidate (lr changed)."""
    a = record(
        tmp_path / "a.duckdb",
        Recording(
            "run-a", name="base", step_time=0.2, busy=0.5, findings=["dataloader-bound"],
            config={"lr": 1e-3, "batch_size": 64}, tags={"opt": "adam"},
        ),
    )  # fmt: skip
    b = record(
        tmp_path / "b.duckdb",
        Recording(
            "run-b", name="fast", step_time=0.154, busy=0.93, t0=1_700_100_000.0,
            config={"lr": 3e-4, "batch_size": 64}, tags={"opt": "adam"},
        ),
    )  # fmt: skip
    return a, b
