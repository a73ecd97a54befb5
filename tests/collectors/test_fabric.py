"""The fabric source over recorded and simulated sysfs trees, replayed over (simulated) time."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from agent.catalog import CATALOG
from agent.registry import default_registry
from agent.source import CollectContext
from collectors.fabric.collector import FabricCollector
from collectors.fabric.parse import parse_numbered, parse_operstate, parse_rate, parse_speed
from collectors.sim.fabric_storage.tree import FabricTree, SimPort

DATA = Path(__file__).parents[1] / "data" / "fabric-storage" / "ib"


def _values(batch) -> dict[tuple[str, str], float]:
    return {(e, m): v for e, m, v in zip(batch.entities, batch.metrics, batch.values)}


def _replay(tmp_path: Path) -> tuple[dict, dict, FabricCollector]:
    """Collect the recorded tree at t0, then the t1 tree 10 s later in the same place."""
    root = tmp_path / "sys"
    shutil.copytree(DATA / "t0", root, symlinks=True)
    collector = FabricCollector()
    collector.start(CollectContext(sys_root=str(root)))
    first = collector.collect(100.0)
    shutil.rmtree(root)
    shutil.copytree(DATA / "t1", root, symlinks=True)
    second = collector.collect(110.0)
    return _values(first), _values(second), collector


def _rate(v0: dict, v1: dict, entity: str, metric: str, dt: float = 10.0) -> float:
    return (v1[(entity, metric)] - v0[(entity, metric)]) / dt


def test_replayed_ports_give_known_rates_within_one_percent(tmp_path):
    v0, v1, _ = _replay(tmp_path)
    assert _rate(v0, v1, "ib:mlx5_0/1", "host.ib.rx_bytes") == pytest.approx(10e9, rel=0.01)
    assert _rate(v0, v1, "ib:mlx5_0/1", "host.ib.tx_bytes") == pytest.approx(5e9, rel=0.01)
    assert _rate(v0, v1, "ib:mlx5_0/1", "host.ib.rx_packets") == pytest.approx(2.5e6, rel=0.01)
    assert _rate(v0, v1, "ib:mlx5_2/1", "host.ib.rx_bytes") == pytest.approx(2e9, rel=0.01)
    assert v1[("ib:mlx5_0/1", "host.ib.rate")] == 25e9  # 200 Gb/sec
    assert v1[("ib:mlx5_0/1", "host.ib.up")] == 1
    assert v1[("ib:mlx5_0/1", "host.ib.state")] == 4
    assert v1[("ib:mlx5_0/1", "host.ib.phys_state")] == 5


def test_a_32_bit_data_counter_that_wraps_counts_on(tmp_path):
    v0, v1, collector = _replay(tmp_path)
    assert _rate(v0, v1, "ib:mlx5_1/1", "host.ib.rx_bytes") == pytest.approx(2.5e8, rel=0.01)
    assert _rate(v0, v1, "ib:mlx5_1/1", "host.ib.rx_packets") == pytest.approx(1e5, rel=0.01)
    port = collector._ports["ib:mlx5_1/1"]
    assert port.attrs["data_counters"] == "32"
    assert collector.counter_events("ib:mlx5_1/1") == (2, 0)  # data and packets wrapped once


def test_counters_ext_are_preferred_over_the_32_bit_counters(tmp_path):
    _, _, collector = _replay(tmp_path)
    paths = [c.path for c in collector._ports["ib:mlx5_0/1"].counters]
    assert any(p.endswith("counters_ext/port_rcv_data_64") for p in paths)
    assert not any(p.endswith("counters/port_rcv_data") for p in paths)


def test_error_counters_are_read_and_summed(tmp_path):
    v0, v1, _ = _replay(tmp_path)
    assert v1[("ib:mlx5_1/1", "host.ib.symbol_error")] == 3
    assert v1[("ib:mlx5_1/1", "host.ib.errors")] - v0[("ib:mlx5_1/1", "host.ib.errors")] == 3
    assert CATALOG["host.ib.errors"].role == "port.errors"


def test_roce_congestion_counters_come_from_hw_counters(tmp_path):
    v0, v1, _ = _replay(tmp_path)
    assert _rate(v0, v1, "ib:mlx5_2/1", "host.ib.cnp_sent") == pytest.approx(100.0)
    assert _rate(v0, v1, "ib:mlx5_2/1", "host.ib.ecn_marked") == pytest.approx(200.0)
    assert ("ib:mlx5_0/1", "host.ib.cnp_sent") not in v1  # an IB port without hw_counters
    assert {m.name for m in CATALOG.by_role("port.cnp")} >= {"host.ib.cnp_sent"}


def test_a_port_reading_no_pma_is_absent_with_one_debug_line(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="collectors.fabric")
    v0, v1, collector = _replay(tmp_path)
    for _ in range(3):
        collector.collect(120.0)
    assert not {m for (e, m) in v1 if e == "ib:qib0/1" and "bytes" in m}
    assert v1[("ib:qib0/1", "host.ib.state")] == 4  # the port itself is still seen
    lines = [r for r in caplog.records if "absent" in r.getMessage()]
    assert len(lines) == 1 and "port_rcv_data" in lines[0].getMessage()


def test_no_infiniband_costs_one_listdir_per_tick_and_logs_one_debug_line(
    tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG, logger="collectors.fabric")
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    collector = FabricCollector(sys_root=tmp_path)
    collector.start(CollectContext())
    for t in range(10):
        assert len(collector.collect(float(t))) == 0
    assert opened == []
    assert len([r for r in caplog.records if r.name.startswith("collectors.fabric")]) == 1


def test_each_file_is_read_once_per_tick(tmp_path, monkeypatch):
    root = tmp_path / "sys"
    shutil.copytree(DATA / "t0", root, symlinks=True)
    collector = FabricCollector(sys_root=root)
    collector.start(CollectContext())
    collector.collect(1.0)  # discovery reads each file once to decide what to keep
    reads: list[str] = []
    real = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: reads.append(p) or real(p, *a, **k))
    collector.collect(2.0)
    assert reads and len(reads) == len(set(reads))
    assert any(p.endswith("/state") for p in reads) and any("/counters" in p for p in reads)


def _tree(tmp_path: Path, **port) -> tuple[FabricTree, SimPort, FabricCollector]:
    tree = FabricTree(tmp_path)
    p = tree.add_port(SimPort("mlx5_0", 1, **port))
    tree.add_port(SimPort("mlx5_0", 2))
    tree.write()
    collector = FabricCollector()
    collector.start(CollectContext(sys_root=str(tmp_path)))
    return tree, p, collector


def test_a_port_going_down_reports_its_state_and_up_zero(tmp_path):
    tree, port, collector = _tree(tmp_path)
    ups = []
    for t in range(6):
        if t == 3:
            port.state, port.phys_state = 1, 3  # DOWN, Disabled
        port.rx_bytes += 0 if t >= 3 else 10**9
        tree.write()
        ups.append(_values(collector.collect(float(t)))[("ib:mlx5_0/1", "host.ib.up")])
    assert ups == [1, 1, 1, 0, 0, 0]
    assert _values(collector.collect(7.0))[("ib:mlx5_0/1", "host.ib.state")] == 1


def test_a_downtrained_port_reports_its_rate_below_its_maximum(tmp_path):
    tree, port, collector = _tree(tmp_path, gbps=200)
    collector.collect(0.0)
    port.gbps, port.lanes = 100, 2  # retrained at half the lanes
    tree.write()
    v = _values(collector.collect(1.0))
    assert v[("ib:mlx5_0/1", "host.ib.rate")] == 12.5e9
    assert v[("ib:mlx5_0/1", "host.ib.rate.max")] == 25e9


def _dual_port(tmp_path: Path, second_gbps: float) -> tuple[FabricTree, SimPort, FabricCollector]:
    """mlx5_0 with port 1 at 200 Gb/s and port 2 cabled at ``second_gbps`` from the start."""
    tree = FabricTree(tmp_path)
    tree.add_port(SimPort("mlx5_0", 1, gbps=200))
    second = tree.add_port(SimPort("mlx5_0", 2, gbps=second_gbps, lanes=2))
    tree.write()
    collector = FabricCollector()
    collector.start(CollectContext(sys_root=str(tmp_path)))
    return tree, second, collector


def test_a_port_cabled_slower_than_its_sibling_from_the_start_is_at_its_own_best(tmp_path):
    """A dual-port HCA whose second port runs 100 Gb/s on purpose (a split cable): its
    faster sibling does not make it a downtrained link, however long the run."""
    tree, _, collector = _dual_port(tmp_path, 100)
    for t in range(5):
        tree.write()
        v = _values(collector.collect(float(t)))
        assert v[("ib:mlx5_0/2", "host.ib.rate")] == 12.5e9
        assert v[("ib:mlx5_0/2", "host.ib.rate.max")] == 12.5e9
        assert v[("ib:mlx5_0/1", "host.ib.rate.max")] == 25e9


def test_a_port_that_was_faster_and_dropped_is_below_its_own_best(tmp_path):
    tree, second, collector = _dual_port(tmp_path, 200)
    collector.collect(0.0)
    second.gbps = 100  # retrained at half the lanes
    tree.write()
    v = _values(collector.collect(1.0))
    assert v[("ib:mlx5_0/2", "host.ib.rate")] == 12.5e9
    assert v[("ib:mlx5_0/2", "host.ib.rate.max")] == 25e9


def test_a_port_already_downtrained_when_first_seen_starts_at_its_first_rate(tmp_path):
    """sysfs shows only the trained rate (no supported width or speed), so a single-port
    device first seen at half rate has nothing to be compared with: a documented limit."""
    tree = FabricTree(tmp_path)
    port = tree.add_port(SimPort("mlx5_0", 1, gbps=100, lanes=2))
    tree.write()
    collector = FabricCollector(sys_root=tmp_path)
    v = _values(collector.collect(0.0))
    assert v[("ib:mlx5_0/1", "host.ib.rate.max")] == v[("ib:mlx5_0/1", "host.ib.rate")] == 12.5e9
    port.gbps, port.lanes = 200, 4  # it trains at full rate later: that is its best from then
    tree.write()
    collector.collect(1.0)
    port.gbps, port.lanes = 100, 2
    tree.write()
    assert _values(collector.collect(2.0))[("ib:mlx5_0/1", "host.ib.rate.max")] == 25e9


def test_a_ports_best_rate_outlives_its_rediscovery(tmp_path):
    """A port whose files vanish and come back (a driver restart) is rediscovered; its best
    rate is the entity's, so it is still judged against what it reached before."""
    tree, port, collector = _tree(tmp_path, gbps=200)
    collector.collect(0.0)
    shutil.rmtree(tmp_path / "class" / "infiniband" / "mlx5_0" / "ports" / "1")
    from collectors.sim.fabric_storage import tree as tree_module

    tree_module._WRITTEN.clear()  # the tree writes every file again
    collector.collect(1.0)
    port.gbps, port.lanes = 100, 2
    tree.write()
    collector.collect(2.0)
    v = _values(collector.collect(3.0))
    assert v[("ib:mlx5_0/1", "host.ib.rate")] == 12.5e9
    assert v[("ib:mlx5_0/1", "host.ib.rate.max")] == 25e9


def test_a_cleared_error_counter_counts_on_from_its_new_value(tmp_path):
    tree, port, collector = _tree(tmp_path)
    port.errors["port_rcv_errors"] = 40
    tree.write()
    collector.collect(0.0)
    port.errors["port_rcv_errors"] = 2  # perfquery -x cleared it, then two more arrived
    tree.write()
    assert _values(collector.collect(1.0))[("ib:mlx5_0/1", "host.ib.port_rcv_errors")] == 42


def test_ports_that_appear_later_are_picked_up(tmp_path):
    collector = FabricCollector(sys_root=tmp_path)
    collector.start(CollectContext())
    assert len(collector.collect(1.0)) == 0
    tree = FabricTree(tmp_path)
    tree.add_port(SimPort("mlx5_0", 1, tx_bytes=8))
    tree.write()
    assert _values(collector.collect(2.0))[("ib:mlx5_0/1", "host.ib.tx_bytes")] == 8.0


def test_interfaces_report_line_rate_state_and_bond_parents(tmp_path):
    _, v1, _ = _replay(tmp_path)
    assert v1[("net:ens1f0", "host.net.speed")] == 12.5e9
    assert v1[("net:ens1f1", "host.net.up")] == 0
    assert default_registry().kind_of("fabric", "net:bond0") == "interface"
    root = tmp_path / "again"
    shutil.copytree(DATA / "t0", root, symlinks=True)
    collector = FabricCollector(sys_root=root)
    attrs = collector.collect(1.0).entity_attrs
    assert attrs["net:bond0"]["kind"] == "bond"
    assert attrs["net:bond0"]["parents"] == "ens1f0,ens1f1"
    assert attrs["ib:mlx5_2/1"]["netdev"] == "ens1f0"
    assert attrs["ib:mlx5_2/1"]["link_layer"] == "Ethernet"


def test_every_emitted_metric_is_declared_by_the_fabric_source(tmp_path):
    v0, v1, _ = _replay(tmp_path)
    assert {CATALOG[m].source for (_, m) in v1} == {"fabric"}
    assert {default_registry().kind_of("fabric", e) for (e, _) in v1} == {"port", "interface"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200 Gb/sec (4X HDR)\n", 25e9),
        ("2.5 Gb/sec (1X SDR)\n", 2.5e9 / 8),
        ("400 Gb/sec (4X NDR)", 50e9),
        ("N/A", None),
        ("", None),
    ],
)
def test_rates_parse_to_bytes_per_second(text, expected):
    assert parse_rate(text) == expected


def test_states_and_speeds_parse():
    assert parse_numbered(b"4: ACTIVE\n") == 4
    assert parse_numbered(b"garbage") is None
    assert parse_speed(b"-1\n") is None
    assert parse_speed(b"25000\n") == 25e9 / 8
    assert parse_operstate(b"up\n") == 1 and parse_operstate(b"unknown\n") is None


def test_a_vlan_interface_is_described_with_its_parent(tmp_path):
    tree = FabricTree(tmp_path)
    tree.interface("ens1f0", 100000)
    tree.interface("ens1f0.100", 100000, parents=("ens1f0",))
    tree.write()
    attrs = FabricCollector(sys_root=tmp_path).collect(1.0).entity_attrs
    assert attrs["net:ens1f0.100"]["kind"] == "vlan"
    assert attrs["net:ens1f0.100"]["parents"] == "ens1f0"


def test_an_ipoib_interface_is_described_as_such(tmp_path):
    """``type`` 32 (ARPHRD_INFINIBAND): IP over InfiniBand, whose bytes its port counts too."""
    from collectors.fabric.interfaces import describe_interface

    for name, arphrd, kind in (("ib0", "32", "ipoib"), ("eth0", "1", "physical")):
        ndir = tmp_path / name
        ndir.mkdir()
        (ndir / "type").write_text(f"{arphrd}\n")
        (ndir / "device").mkdir()
        assert describe_interface(str(tmp_path), name).attrs["kind"] == kind, name
