"""Shared fixtures: real child processes with workers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import WORKER_JOB

#: ``dummy_accelerator``: a test-only accelerator source, registered for one test.
pytest_plugins = ["tests.fakes.dummy_accelerator"]


def pytest_configure(config):
    """Sources register through entry points: an install older than them fails every test."""
    from importlib import metadata

    from agent.app.sources import BUILTIN_SOURCES

    installed = {ep.name for ep in metadata.entry_points(group="accelwatch.sources")}
    missing = sorted(set(BUILTIN_SOURCES) - installed)
    if missing:
        raise pytest.UsageError(
            f"accelwatch's entry points for {', '.join(missing)} are not installed: "
            "reinstall it (.venv/bin/pip install -e '.[test]')"
        )
    # A recording loads the registry when it starts its sources, before any consumer runs; tests
    # that drive consumers without a Session get the same, so no one-off plug-in import is
    # billed to, say, the first live analysis pass.
    from agent.registry import default_registry

    default_registry().load()


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
