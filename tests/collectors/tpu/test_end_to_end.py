"""The simulated runtime serves a scenario; the collector records it into a real DuckDB file."""

from __future__ import annotations

import duckdb
import pytest
from tpu_info import device as tpu_device
from tpu_info import metrics as tpu_info_metrics

from agent.store import Store
from collectors.sim.tpu import runtime as simrt
from collectors.tpu.source import SPEC

UNITS = {m.name: m.unit for m in SPEC.metrics}


def _record(sim, collector, clock, store, ticks: int, dt: float = 1.0):
    sent = []
    for _ in range(ticks):
        batch = collector.collect(clock.advance(dt))
        store.write_ticks([("run1", [batch])])
        sent.append(dict(sim.server.runtime.sent))
    return sent


def _last(db, metric: str) -> dict[str, float]:
    rows = db.execute(
        "SELECT entity, arg_max(value, ts) FROM samples WHERE metric = ? GROUP BY entity",
        [metric],
    ).fetchall()
    return dict(rows)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "run.duckdb")
    yield s
    s.close()


def test_recorded_values_and_units_match_what_the_runtime_sent(tpu_vm, clock, store, tmp_path):
    sim, collector = tpu_vm("tpu-v5e-8-healthy")
    sent = _record(sim, collector, clock, store, 4)[-1]
    db = store.con
    used, total = _last(db, "tpu.memory.used"), _last(db, "tpu.memory.total")
    duty, bw = _last(db, "tpu.duty_cycle"), _last(db, "tpu.hbm.utilization")
    assert sorted(used) == [f"tpu{i}" for i in range(8)]
    for i in range(8):
        assert used[f"tpu{i}"] == sent[(simrt.HBM_USAGE, i)]  # bytes, as sent
        assert total[f"tpu{i}"] == sent[(simrt.HBM_TOTAL, i)] == 16 * 2**30
        assert duty[f"tpu{i}"] == pytest.approx(sent[(simrt.DUTY_CYCLE, i)] / 100)  # ratio
        assert bw[f"tpu{i}"] == pytest.approx(sent[(simrt.HBM_UTIL, i)] / 100)
    assert _last(db, "tpu.hlo.queue.size")["tpu0"] == sent[(simrt.QUEUE, 0)] == 3
    p50 = _last(db, "tpu.hlo.execution.p50")["tpu0"]
    median_s = sent[(simrt.HLO_TIMING, 0)] * 1e-6  # µs → s
    assert median_s / 2 <= p50 <= median_s * 2
    assert _last(db, "tpu.core.queued_programs")["tpu5"] == sent[("status.queued", 5)]
    assert _last(db, "tpu.runtime.up") == {"tpu": 1.0}
    assert _last(db, "tpu.job.processes")["tpu3"] == 1.0  # the test process holds the chips
    assert (UNITS["tpu.memory.used"], UNITS["tpu.duty_cycle"], UNITS["tpu.hlo.execution.p50"]) == (
        "By",
        "1",
        "s",
    )
    attrs = db.execute("SELECT attrs FROM entities WHERE entity = 'tpu0'").fetchone()[0]
    assert '"chip_type": "v5e"' in attrs


def test_per_chip_duty_cycle_is_mapped_onto_every_core_of_a_two_device_chip(tpu_vm, clock, store):
    sim, collector = tpu_vm("tpu-v3-8-healthy")
    sent = _record(sim, collector, clock, store, 2)[-1]
    duty = _last(store.con, "tpu.duty_cycle")
    used = _last(store.con, "tpu.memory.used")
    for chip in range(4):
        chip_duty = sent[(simrt.DUTY_CYCLE, chip)] / 100
        assert duty[f"tpu{chip}/core0"] == duty[f"tpu{chip}/core1"] == pytest.approx(chip_duty)
        assert duty[f"tpu{chip}"] == pytest.approx(chip_duty)
        cores = [sent[(simrt.HBM_USAGE, chip * 2 + c)] for c in (0, 1)]
        assert used[f"tpu{chip}/core0"] == cores[0]
        assert used[f"tpu{chip}"] == sum(cores)  # the chip's HBM is its cores' HBM


def test_tpu7x_per_device_duty_cycle_and_dcn_latency_percentiles(tpu_vm, clock, store):
    sim, collector = tpu_vm("tpu-7x-multislice-dcn-bound")
    sent = _record(sim, collector, clock, store, 12)[-1]  # past the congestion at 8 s
    duty = _last(store.con, "tpu.duty_cycle")
    assert duty["tpu1/core1"] == pytest.approx(sent[(simrt.DUTY_CYCLE, 3)] / 100)
    dcn = next(n for n in simrt.MEGASCALE if "dcn_transfer" in n)
    p50 = _last(store.con, "tpu.dcn.transfer.p50")["tpu"]
    median_s = sent[(dcn, 0)] * 1e-6
    assert median_s == pytest.approx(9e-3)
    assert median_s / 2 <= p50 <= median_s * 2  # the interval's percentile, not since start
    count = _last(store.con, "tpu.dcn.transfer.count")["tpu"]
    assert count == sim.server.runtime.sent_counts[dcn]


@pytest.mark.parametrize(
    ("scenario", "chip"),
    [("tpu-v5e-8-healthy", tpu_device.TpuChip.V5E), ("tpu-v3-8-healthy", tpu_device.TpuChip.V3)],
)
def test_tpu_info_reads_the_same_hbm_usage_and_duty_cycle_as_we_record(
    tpu_vm, clock, store, scenario, chip
):
    sim, collector = tpu_vm(scenario)
    _record(sim, collector, clock, store, 3)
    usage = tpu_info_metrics.get_chip_usage(chip, addr=sim.server.address)  # same sim time
    devices_per_chip = chip.value.devices_per_chip
    used, duty = _last(store.con, "tpu.memory.used"), _last(store.con, "tpu.duty_cycle")
    assert len(usage) == 8
    for u in usage:
        c, core = divmod(u.device_id, devices_per_chip)
        entity = f"tpu{c}" if devices_per_chip == 1 else f"tpu{c}/core{core}"
        assert used[entity] == u.memory_usage
        assert duty[entity] == pytest.approx(u.duty_cycle_pct / 100)


def test_the_database_is_a_real_file_other_readers_open(tpu_vm, clock, store, tmp_path):
    sim, collector = tpu_vm("tpu-v5e-8-healthy")
    _record(sim, collector, clock, store, 2)
    store.close()
    with duckdb.connect(str(tmp_path / "run.duckdb"), read_only=True) as con:
        n = con.execute("SELECT count(*) FROM samples WHERE source = 'tpu'").fetchone()[0]
    assert n > 100
