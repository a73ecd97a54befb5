"""Cross-check: nvitop reads the same simulated GPUs and agrees with what accelwatch stored.

The agent samples through the Sampler into a real DuckDB file; at the same simulated instant
nvitop's Device API queries the same driver in the same process. The values read back from
the database must match nvitop's, unit conversions included.
"""

from __future__ import annotations

import json
import os

import pytest

from agent.model import RunInfo
from agent.sampler import Sampler
from agent.store import Store, connect
from tests.collectors.nvml_harness import RigFactory, scenario_toml

nvitop = pytest.importorskip("nvitop")


@pytest.fixture
def rig():
    factory = RigFactory()
    yield factory
    factory.close()


def _stored(db: str, ts_s: float) -> tuple[dict[tuple[str, str], float], dict[str, dict]]:
    con = connect(db, read_only=True)
    try:
        rows = con.execute(
            "SELECT entity, metric, value FROM samples WHERE source = 'nvml' "
            "AND ts = make_timestamp(?::BIGINT)",
            [int(ts_s * 1e6)],
        ).fetchall()
        attrs = con.execute("SELECT entity, attrs FROM entities WHERE source = 'nvml'").fetchall()
        simulated = con.execute("SELECT simulated FROM runs").fetchone()
    finally:
        con.close()
    assert simulated == (True,)
    return {(e, m): v for e, m, v in rows}, {e: json.loads(a) for e, a in attrs}


@pytest.mark.parametrize("model", ["h100-sxm-80gb", "rtx-4090"])
def test_nvitop_reads_the_same_values_accelwatch_stored(rig, tmp_path, model):
    r = rig(scenario_toml(model, 2, extra="[job]\nprocesses_per_gpu = 2"))
    db = str(tmp_path / "crosscheck.duckdb")
    store = Store(db)
    run = RunInfo(
        run_id="xcheck",
        name="xcheck",
        pid=os.getpid(),
        cmdline=["test"],
        cwd="/",
        host="test",
        started=r.clock.now,
        interval=1.0,
        db_path=db,
        simulated=True,
        scenario=f"test-{model}",
    )
    store.write_run(run)
    sampler = Sampler(
        [r.collector],
        1.0,
        clock=r.clock,
        sinks=[lambda _now, batches: store.write_ticks([("xcheck", batches)])],
    )
    devices = nvitop.Device.all()
    nvlink_rates = {}
    for _ in range(3):
        r.clock.now += 1.0
        sampler.step(r.clock.now)
        for device in devices:  # nvitop's rates are between its own consecutive calls
            nvlink_rates[device.index] = device.nvlink_throughput()
    store.close()
    values, attrs = _stored(db, r.clock.now)

    for device in devices:
        e = f"gpu{device.index}"
        assert attrs[e]["uuid"] == device.uuid() and attrs[e]["name"] == device.name()
        assert attrs[e]["pci_bus_id"] == device.bus_id()
        assert values[e, "gpu.memory.total"] == device.memory_total()
        assert values[e, "gpu.memory.used"] == device.memory_used()
        assert values[e, "gpu.memory.free"] == device.memory_free()
        assert values[e, "gpu.utilization"] == device.gpu_utilization() / 100
        assert values[e, "gpu.memory.utilization"] == device.memory_utilization() / 100
        assert values[e, "gpu.temperature"] == device.temperature()
        assert values[e, "gpu.power"] == device.power_usage() / 1000
        assert values[e, "gpu.power.limit"] == device.power_limit() / 1000
        assert values[e, "gpu.clock.sm"] == device.sm_clock()
        assert values[e, "gpu.clock.memory"] == device.memory_clock()
        assert values[e, "gpu.clock.sm.max"] == device.max_sm_clock()
        assert values[e, "gpu.clock.memory.max"] == device.max_memory_clock()
        assert f"P{int(values[e, 'gpu.pstate'])}" == device.performance_state()
        if device.fan_speed() != nvitop.NA:
            assert values[e, "gpu.fan.speed"] == device.fan_speed() / 100
        else:
            assert (e, "gpu.fan.speed") not in values
        ecc = device.total_volatile_uncorrected_ecc_errors()
        assert values.get((e, "gpu.ecc.volatile.uncorrected"), nvitop.NA) == ecc
        processes = device.processes()
        assert len(processes) == 2
        for pid, process in processes.items():
            assert values[f"{e}/pid{pid}", "gpu.process.memory"] == process.gpu_memory()
        links = device.nvlink_link_count()
        assert values.get((e, "gpu.nvlink.active_links"), 0) == links
        for link, rates in enumerate(nvlink_rates[device.index]):
            tx = values[f"{e}/nvlink{link}", "gpu.nvlink.tx_throughput"] / 1024  # KiB/s
            assert tx == pytest.approx(rates.tx, abs=1)  # nvitop rounds to whole KiB/s
            rx = values[f"{e}/nvlink{link}", "gpu.nvlink.rx_throughput"] / 1024
            assert rx == pytest.approx(rates.rx, abs=1)
