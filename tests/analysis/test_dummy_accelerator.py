"""A source defined only in a test is analysed like NVML: its devices are accelerators by their
entity kind and its metrics fill ``aw_accel`` by role, so the rules apply with no other change."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.analysis import analyze_run
from agent.analysis.watch import hang_state
from agent.catalog import metric
from agent.model import BatchBuilder
from agent.registry import default_registry
from agent.report import build_report
from agent.runs import open_read
from agent.snapshot import Snapshot, SnapshotHub
from agent.source import EntityKind, SourceSpec
from tests.analysis.expect import assert_window, of_rule
from tests.analysis.recording import T0, Recording, record
from tests.fakes.dummy_accelerator import GIB, DummyDevice

RUN_S = 90


def _record_dummy(tmp_path, dummy_accelerator, name: str) -> tuple[str, str]:
    db, run_id = record(
        tmp_path / f"{name}.duckdb",
        Recording(None, RUN_S, collectors=[dummy_accelerator.spec.collector]),
    )
    return str(db), run_id


def test_idle_reserved_dummy_devices_get_the_idle_reserved_finding(
    tmp_path, dummy_accelerator, open_db
):
    db, run_id = _record_dummy(tmp_path, dummy_accelerator, "dummy-idle")  # 30 of 80 GiB, idle
    findings = analyze_run(open_db(db), run_id)
    idle = of_rule(findings, "idle-reserved-gpu")
    assert {f.entity for f in idle} == {"dev0", "dev1"}
    for f in idle:
        assert f.severity == "warning"
        assert_window(f, 0, RUN_S)
        assert f.evidence["metrics"] == ["dummy.memory.used", "dummy.busy"]
        assert f.evidence["mem_used_bytes"] == 30 * GIB
        assert f.evidence["util_p95"] == 0.0
        assert "30.0 GiB of its memory are in use" in f.summary
    # the explanation hides the symptom, as on GPUs: no "starved" rows beside it
    assert of_rule(findings, "gpu-starvation") == []


def test_a_busy_dummy_device_is_not_idle_reserved_and_its_idle_peer_is(
    tmp_path, dummy_accelerator, open_db
):
    dummy_accelerator.model.devices[0] = DummyDevice(busy=0.95, power=300.0)
    db, run_id = _record_dummy(tmp_path, dummy_accelerator, "dummy-mixed")
    findings = analyze_run(open_db(db), run_id)
    assert {f.entity for f in of_rule(findings, "idle-reserved-gpu")} == {"dev1"}
    assert [f for f in findings if f.entity == "dev0"] == []


def test_busy_dummy_devices_yield_no_finding(tmp_path, dummy_accelerator, open_db):
    dummy_accelerator.model.devices[:] = [DummyDevice(busy=0.95, power=300.0)] * 2
    db, run_id = _record_dummy(tmp_path, dummy_accelerator, "dummy-busy")
    assert analyze_run(open_db(db), run_id) == []


def test_dummy_devices_fill_the_accelerator_frame_by_role(tmp_path, dummy_accelerator, open_db):
    db, run_id = _record_dummy(tmp_path, dummy_accelerator, "dummy-frame")
    con = open_db(db)
    analyze_run(con, run_id, store=False)  # leaves the frames on the connection
    rows = con.execute(
        "SELECT entity, avg(busy), avg(mem_used), avg(mem_total), avg(power), "
        "count(sm), count(job_memory) FROM aw_accel GROUP BY entity ORDER BY entity"
    ).fetchall()
    assert rows == [
        ("dev0", 0.0, 30 * GIB, 80 * GIB, 60.0, 0, 0),
        ("dev1", 0.0, 30 * GIB, 80 * GIB, 60.0, 0, 0),
    ]


def test_the_report_summarises_dummy_devices_as_accelerators(tmp_path, dummy_accelerator, open_db):
    dummy_accelerator.model.set(0, busy=0.5)
    db, run_id = _record_dummy(tmp_path, dummy_accelerator, "dummy-report")
    con = open_db(db)
    analyze_run(con, run_id)  # what the recording agent does when the run ends
    con.close()
    reader = open_read(db)
    try:
        report = build_report(reader, run_id, db)
    finally:
        reader.close()
    devices = {d.entity: d for d in report.summary.devices}
    assert set(devices) == {"dev0", "dev1"}
    assert devices["dev0"].name == "Dummy Accelerator"
    assert devices["dev0"].util_p50 == 0.5 and devices["dev1"].util_p50 == 0.0
    assert [f.entity for f in report.findings if f.rule == "idle-reserved-gpu"] == ["dev1"]


def _dummy_snapshot(busy: float, job_cpu: float) -> Snapshot:
    hub = SnapshotHub()
    dev = BatchBuilder("dummy", T0)
    for i in range(2):
        dev.describe(f"dev{i}", name="Dummy Accelerator")
        dev.add_many(f"dev{i}", {"dummy.busy": busy, "dummy.memory.used": 30 * GIB})
    proc = BatchBuilder("process", T0)
    proc.add("4242", "process.cpu.utilization", job_cpu)
    return hub.publish(T0, [dev.build(), proc.build()], {})


def test_the_hang_watch_reads_dummy_devices_by_kind_and_role(dummy_accelerator):
    assert hang_state(_dummy_snapshot(busy=0.0, job_cpu=0.01)) == "idle"
    assert hang_state(_dummy_snapshot(busy=0.9, job_cpu=0.01)) is None
    assert hang_state(_dummy_snapshot(busy=0.0, job_cpu=1.5)) is None  # the host works


#: A source that knows which processes use each device but not their memory (as TPU chips are
#: owned through their device files): a second test-only accelerator.
_OWNED = SourceSpec(
    name="owned",
    label="Owned accelerator (tests)",
    metrics=(
        metric("owned.busy", "1", "gauge", "Busy share.", source="owned", role="accelerator.busy"),
        metric(
            "owned.memory.used",
            "By",
            "gauge",
            "Memory in use.",
            source="owned",
            role="accelerator.memory.used",
        ),
        metric(
            "owned.job.processes",
            "1",
            "gauge",
            "Job processes on the device.",
            source="owned",
            role="accelerator.job.processes",
        ),
    ),
    entity_kinds=(EntityKind("accelerator", "acc[0-9]+", {"hw.type": "tpu"}),),
)


@pytest.fixture
def owned_accelerator() -> Iterator[SourceSpec]:
    default_registry().register(_OWNED)
    try:
        yield _OWNED
    finally:
        default_registry().unregister(_OWNED.name)


def _owned_devices(t: float, b: BatchBuilder) -> None:
    """acc0 is held by the job and idle; acc1 idles with another tenant's memory."""
    for i, procs in enumerate((1, 0)):
        b.add_many(
            f"acc{i}",
            {"owned.busy": 0.0, "owned.memory.used": 20 * GIB, "owned.job.processes": procs},
        )


def test_a_device_the_job_owns_by_process_is_idle_reserved_by_its_memory_in_use(
    tmp_path, owned_accelerator, open_db
):
    db, run_id = record(
        tmp_path / "owned.duckdb", Recording(None, RUN_S, extra=[("owned", _owned_devices)])
    )
    findings = analyze_run(open_db(str(db)), run_id)
    (idle,) = of_rule(findings, "idle-reserved-gpu")
    assert idle.entity == "acc0" and idle.evidence["mem_used_bytes"] == 20 * GIB
    assert idle.evidence["metrics"] == ["owned.memory.used", "owned.busy"]
