"""Fixtures for the training client's tests: a private runtime dir, a real receiving socket."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.tracking.aggregate import Aggregator
from agent.tracking.receiver import Receiver

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runtime_dir(monkeypatch) -> Iterator[str]:
    """A runtime dir of this test's own (short: Unix socket paths hold 107 bytes)."""
    base = tempfile.mkdtemp(prefix="awt", dir="/tmp")
    path = os.path.join(base, "rt")
    monkeypatch.setenv("ACCELWATCH_RUNTIME_DIR", path)
    monkeypatch.delenv("ACCELWATCH_SOCKET", raising=False)
    monkeypatch.delenv("ACCELWATCH_MODE", raising=False)
    yield path
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def receiver(runtime_dir) -> Iterator[Receiver]:
    """A started receiver at ``<runtime_dir>/test.sock`` feeding a fresh aggregator."""
    rx = Receiver(os.path.join(runtime_dir, "test.sock"), Aggregator())
    rx.start()
    yield rx
    rx.close()


def script(tmp_path: Path, body: str, name: str = "job.py") -> Path:
    """A Python script that imports the checkout's ``accelwatch`` (and nothing installed)."""
    path = tmp_path / name
    path.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\n" + textwrap.dedent(body))
    return path


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELWATCH_SOCKET")}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


PYTHON = sys.executable
