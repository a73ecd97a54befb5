"""Fixtures: OTLP receivers, a real Prometheus server, a recorded session of a real job."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.app.session import Session, SessionConfig
from agent.store import connect
from tests.exporters.receivers import GrpcReceiver, HttpReceiver

INTERVAL = 0.2
PROMETHEUS = "/usr/bin/prometheus"

#: A parent that starts one child; both sleep (cheap on a shared 2-core machine).
SLEEPING_JOB = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture(autouse=True)
def otel_env(monkeypatch):
    """A clean OTEL_* environment with a short export interval and timeout."""
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BLRP_SCHEDULE_DELAY", "200")
    return monkeypatch


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    receiver = GrpcReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def job(tmp_path) -> Iterator[subprocess.Popen[str]]:
    script = tmp_path / "job.py"
    script.write_text(SLEEPING_JOB)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    for child in _children(proc.pid):
        _kill(child)
    proc.kill()
    proc.wait()


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _kill(pid: int) -> None:
    import contextlib

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


@pytest.fixture
def record(tmp_path, job) -> Callable[..., object]:
    """``with record(otlp=..., ...) as session:`` records the job; the session finishes on exit."""

    @contextmanager
    def recording(**config) -> Iterator[Session]:
        config.setdefault("live_analysis", False)
        session = Session(
            SessionConfig(db_path=str(tmp_path / "run.duckdb"), interval=INTERVAL, **config)
        )
        session.attach(job.pid)
        try:
            yield session
        finally:
            session.finish()

    return recording


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    return predicate()


# -- the DuckDB record ------------------------------------------------------------------------
def recorded_values(db_path: str, run_id: str) -> dict[tuple[str, str, str], set[float]]:
    """(source, entity, metric) → every value the run recorded."""
    con = connect(db_path, read_only=True)
    rows = con.execute(
        "SELECT source, entity, metric, value FROM samples WHERE run_id = ?", [run_id]
    ).fetchall()
    con.close()
    out: dict[tuple[str, str, str], set[float]] = defaultdict(set)
    for source, entity, metric, value in rows:
        out[(source, entity, metric)].add(value)
    return out


def assert_record_complete(session: Session, *, max_gap_factor: float = 2.5) -> None:
    """Sampling had no gaps and every tick the sampler took is in the database."""
    assert session.run is not None and session.sampler is not None
    con = connect(session.config.db_path, read_only=True)
    ticks = [
        row[0]
        for row in con.execute(
            "SELECT DISTINCT epoch(ts) AS t FROM samples WHERE run_id = ? AND source = 'host' "
            "ORDER BY t",
            [session.run.run_id],
        ).fetchall()
    ]
    rows = con.execute(
        "SELECT count(*) FROM samples WHERE run_id = ?", [session.run.run_id]
    ).fetchone()[0]
    end = json.loads(
        con.execute(
            "SELECT detail FROM events WHERE run_id = ? AND kind = 'run_end'", [session.run.run_id]
        ).fetchone()[0]
    )
    con.close()
    assert end["dropped_ticks"] == 0
    assert end["rows_written"] == rows
    assert len(ticks) == end["ticks"]
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert max(gaps) < max_gap_factor * INTERVAL, f"sampling gap of {max(gaps):.2f}s"


# -- a real Prometheus server ----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusServer:
    """``/usr/bin/prometheus`` scraping one target every second, queried over its HTTP API."""

    def __init__(self, tmp_path: Path, target: str) -> None:
        self.port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            textwrap.dedent(f"""
            global:
              scrape_interval: 1s
              scrape_timeout: 900ms
            scrape_configs:
              - job_name: accelwatch
                static_configs:
                  - targets: ["{target}"]
            """)
        )
        self.log = (tmp_path / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if not wait_for(self._ready, timeout=30, step=0.2):
            self.stop()
            raise RuntimeError("prometheus did not become ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        return self.api("query", query=promql)["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus(tmp_path) -> Iterator[Callable[[str], PrometheusServer]]:
    """Start a Prometheus scraping a target; skipped without the binary unless ``CI`` is set."""
    if not (os.access(PROMETHEUS, os.X_OK) or shutil.which("prometheus")):
        if os.environ.get("CI"):
            pytest.fail(f"{PROMETHEUS} is missing on CI (apt-get install prometheus)")
        pytest.skip(f"{PROMETHEUS} not installed (apt-get install prometheus); CI runs this")
    started: list[PrometheusServer] = []

    def start(target: str) -> PrometheusServer:
        server = PrometheusServer(tmp_path, target)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
