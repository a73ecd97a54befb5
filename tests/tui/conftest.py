"""Fixtures: a real Session/Store/SnapshotHub fed deterministic synthetic ticks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.analysis.finding import Finding as StoredFinding  # noqa: F401 - proves the table shape
from agent.app.session import Session, SessionControl
from agent.reader import LiveReader
from agent.recorded import RecordedReader
from tests.tui.synthetic import SyntheticJob, end_session, synthetic_session


@pytest.fixture
def live(tmp_path) -> Iterator[tuple[Session, LiveReader, SyntheticJob]]:
    """A live session (2 GPUs, 1 used, thermally throttled) with 12 ticks already published."""
    job = SyntheticJob(gpus=2, used=1, throttled=True)
    session = synthetic_session(str(tmp_path / "live.duckdb"), job, 0)
    reader = LiveReader(session.context, SessionControl(session))
    from tests.tui.synthetic import feed

    for tick in range(12):
        feed(session, job, tick)
    yield session, reader, job
    reader.close()
    end_session(session)


def write_findings(db_path: str, run_id: str, job: SyntheticJob) -> None:
    """Store the job's findings as the post-run analysis would."""
    from datetime import datetime, timezone

    from agent.analysis.finding import Finding, store_findings
    from agent.store import connect

    def at(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)

    findings = [
        Finding(
            "gpu_thermal_throttle",
            "warning",
            "gpu0",
            at(job.ts(10)),
            at(job.ts(25)),
            "gpu0 thermally throttled for 15 s",
            "Check cooling.",
            {"metric": "gpu.clock_event.hw_thermal", "seconds": 15},
        ),
        Finding(
            "input_bound",
            "critical",
            "4242",
            at(job.ts(20)),
            at(job.ts(29)),
            "GPU idle while the loader is busy",
            "Add data-loader workers.",
            {"gpu_util_mean": 0.2},
        ),
    ]
    con = connect(db_path)
    try:
        store_findings(con, run_id, findings, live=False)
    finally:
        con.close()


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> Iterator[tuple[str, SyntheticJob]]:
    """A finished 30-tick recording with two stored findings (built once; only read)."""
    job = SyntheticJob(gpus=2, used=1, throttled=True)
    db = str(tmp_path_factory.mktemp("recorded") / "recorded.duckdb")
    session = synthetic_session(db, job, 30, with_child=False)
    end_session(session)
    write_findings(db, "run-synthetic", job)
    yield db, job


@pytest.fixture
def recorded_reader(recorded) -> Iterator[RecordedReader]:
    reader = RecordedReader.open(recorded[0])
    yield reader
    reader.close()
