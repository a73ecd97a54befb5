"""The fabric and storage simulators: scenario tables become fake trees the real collectors read."""

from __future__ import annotations

import os

import pytest

from agent.source import CollectContext
from collectors.fabric.collector import FabricCollector
from collectors.sim.fabric_storage.scenario import parse_fabric, parse_storage
from collectors.sim.fabric_storage.sim import (
    ENV_FABRIC_SYS_ROOT,
    ENV_STORAGE_PROC_ROOT,
    SimFabric,
    SimStorage,
    install,
    part_of,
)
from collectors.storage.collector import StorageCollector


def _values(batch):
    return {(e, m): v for e, m, v in zip(batch.entities, batch.metrics, batch.values)}


def _fabric_run(tmp_path, scenario, seconds=60):
    sim = SimFabric(part_of(scenario, "fabric"), tmp_path / "sys")
    collector = FabricCollector(sys_root=tmp_path / "sys")
    collector.start(CollectContext())
    out = []
    for t in range(seconds):
        sim.advance(float(t))
        out.append(_values(collector.collect(1000.0 + t)))
    return out


def _storage_run(tmp_path, scenario, seconds=60):
    sim = SimStorage(part_of(scenario, "storage"), tmp_path / "proc", tmp_path / "sys")
    collector = StorageCollector(rescan_s=5)
    collector.start(
        CollectContext(proc_root=str(tmp_path / "proc"), sys_root=str(tmp_path / "sys"))
    )
    out = []
    for t in range(seconds):
        sim.advance(float(t))
        out.append(_values(collector.collect(1000.0 + t)))
    return out


def _rate(ticks, t, entity, metric):
    return ticks[t][(entity, metric)] - ticks[t - 1][(entity, metric)]


def test_an_ib_port_degrades_then_goes_down_mid_run(tmp_path):
    ticks = _fabric_run(tmp_path, "ib-port-degrading")
    port = "ib:mlx5_2/1"
    assert ticks[10][(port, "host.ib.rate")] == 25e9
    assert ticks[30][(port, "host.ib.rate")] == 12.5e9
    assert ticks[30][(port, "host.ib.rate.max")] == 25e9
    assert _rate(ticks, 30, port, "host.ib.errors") == pytest.approx(40, abs=2)
    assert ticks[45][(port, "host.ib.up")] == 0 and ticks[30][(port, "host.ib.up")] == 1
    assert _rate(ticks, 10, "ib:mlx5_0/1", "host.ib.rx_bytes") == pytest.approx(15e9, rel=0.01)
    assert ticks[45][("ib:mlx5_0/1", "host.ib.up")] == 1


def test_dual_port_hcas_write_each_ports_own_link_layer_and_netdev(tmp_path):
    """``ports_per_device = 2``: mlx5_0/1, mlx5_0/2, ...; the second port of a device has its
    own ``link_layer`` and RoCE netdev, as in sysfs."""
    part = parse_fabric({"ports": 4, "ports_per_device": 2, "link_layer": "Ethernet"})
    SimFabric(part, tmp_path / "sys")
    base = tmp_path / "sys" / "class" / "infiniband"
    ports = sorted(str(p.relative_to(base)) for p in base.glob("*/ports/*"))
    assert ports == ["mlx5_0/ports/1", "mlx5_0/ports/2", "mlx5_1/ports/1", "mlx5_1/ports/2"]
    second = base / "mlx5_0" / "ports" / "2"
    assert (second / "link_layer").read_text() == "Ethernet\n"
    assert (second / "gid_attrs" / "ndevs" / "0").read_text() == "ens1f1\n"


def test_roce_congestion_raises_cnp_and_ecn_while_throughput_falls(tmp_path):
    ticks = _fabric_run(tmp_path, "roce-congestion")
    port = "ib:mlx5_1/1"
    assert _rate(ticks, 10, port, "host.ib.cnp_sent") == pytest.approx(5, abs=1)
    assert _rate(ticks, 30, port, "host.ib.cnp_sent") == pytest.approx(4000, rel=0.01)
    assert _rate(ticks, 30, port, "host.ib.ecn_marked") == pytest.approx(20000, rel=0.01)
    assert _rate(ticks, 30, port, "host.ib.rx_bytes") < 0.5 * _rate(
        ticks, 10, port, "host.ib.rx_bytes"
    )
    assert _rate(ticks, 55, port, "host.ib.cnp_sent") == pytest.approx(5, abs=1)


def test_nfs_latency_climbs_while_reads_fall(tmp_path):
    ticks = _storage_run(tmp_path, "nfs-latency-starving")
    m = "mount:/mnt/data"
    assert ticks[5][(m, "fs.latency")] == pytest.approx(0.001, rel=0.05)
    assert ticks[40][(m, "fs.latency")] == pytest.approx(0.031, rel=0.1)
    assert _rate(ticks, 5, m, "fs.read_bytes") == pytest.approx(900e6, rel=0.01)
    assert _rate(ticks, 40, m, "fs.read_bytes") == pytest.approx(120e6, rel=0.01)


def test_a_checkpoint_to_lustre_writes_in_bursts(tmp_path):
    ticks = _storage_run(tmp_path, "checkpoint-lustre")
    m = "mount:/lustre/scratch"
    assert _rate(ticks, 12, m, "fs.write_bytes") == pytest.approx(2000e6, rel=0.01)
    assert _rate(ticks, 20, m, "fs.write_bytes") < 1e6
    assert _rate(ticks, 42, m, "fs.write_bytes") == pytest.approx(2000e6, rel=0.01)


def test_installing_points_the_collectors_at_the_simulated_tree_and_uninstall_removes_it():
    fabric = install("ib-port-degrading", "fabric")
    storage = install("nfs-latency-starving", "storage")
    try:
        collector = FabricCollector()
        collector.start(CollectContext())
        assert "ib:mlx5_0/1" in collector.collect(1.0).entities
        s = StorageCollector()
        s.start(CollectContext(root_pid=os.getpid(), job_pids=lambda: frozenset({os.getpid()})))
        assert "mount:/mnt/data" in s.collect(1.0).entity_attrs
    finally:
        fabric.uninstall()
        storage.uninstall()
    assert ENV_FABRIC_SYS_ROOT not in os.environ and ENV_STORAGE_PROC_ROOT not in os.environ
    assert not fabric.root.exists() and not storage.root.exists()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"ports": 0}, "ports must be"),
        ({"link_layer": "Ethernets"}, "link_layer"),
        ({"speed": 1}, "unknown key"),
        ({"effects": [{"set": {"bogus": 1}}]}, "unknown signal"),
        ({"effects": [{"start_s": 1}]}, "needs set or ramp"),
        ({"ports_per_device": 3}, "ports_per_device must be 1 or 2"),
    ],
)
def test_a_bad_fabric_table_is_one_line(raw, message):
    with pytest.raises(ValueError, match=message) as e:
        parse_fabric(raw)
    assert "\n" not in str(e.value)


def test_a_bad_storage_table_is_one_line():
    with pytest.raises(ValueError, match="type must be"):
        parse_storage({"mounts": [{"path": "/x", "type": "ntfs"}]})
    with pytest.raises(ValueError, match="at least one"):
        parse_storage({})
