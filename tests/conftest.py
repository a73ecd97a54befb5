"""Shared fixtures: real child processes with workers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import WORKER_JOB

#: ``dummy_accelerator``: a test-only accelerator source, registered for one test.
pytest_plugins = ["tests.fakes.dummy_accelerator"]


@pytest.fixture
def worker_job(tmp_path):
    """Start the worker job; yields the Popen once its workers are up."""
    script = tmp_path / "job.py"
    script.write_text(WORKER_JOB)

    def start(seconds: float = 3.0) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        started.append(proc)
        return proc

    started: list[subprocess.Popen[str]] = []
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
