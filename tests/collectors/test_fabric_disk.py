"""InfiniBand ports and disks are sources of their own, read from injected roots and psutil."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

from agent.model import BatchBuilder
from agent.registry import default_registry
from agent.source import CollectContext
from collectors.disk import DiskCollector, add_disks
from collectors.fabric import FabricCollector, read_infiniband
from collectors.host import HostCollector


def _port(root: Path, device: str, port: int, rx_words: str, tx_words: str) -> None:
    counters = root / "class" / "infiniband" / device / "ports" / str(port) / "counters"
    counters.mkdir(parents=True)
    (counters / "port_rcv_data").write_text(f"{rx_words}\n")
    (counters / "port_xmit_data").write_text(f"{tx_words}\n")


def _values(batch) -> dict[tuple[str, str], float]:
    return {(e, m): v for e, m, v in zip(batch.entities, batch.metrics, batch.values)}


def test_fabric_reads_each_ports_counters_in_bytes_from_an_injected_sys_root(tmp_path):
    _port(tmp_path, "mlx5_0", 1, "1000", "250")
    _port(tmp_path, "mlx5_1", 1, "7", "9")
    collector = FabricCollector(sys_root=tmp_path)
    collector.start(CollectContext())
    batch = collector.collect(10.0)
    assert batch.source == "fabric"
    assert _values(batch) == {
        ("ib:mlx5_0/1", "host.ib.rx_bytes"): 4000.0,
        ("ib:mlx5_0/1", "host.ib.tx_bytes"): 1000.0,
        ("ib:mlx5_1/1", "host.ib.rx_bytes"): 28.0,
        ("ib:mlx5_1/1", "host.ib.tx_bytes"): 36.0,
    }
    assert {default_registry().kind_of("fabric", e) for e in batch.entities} == {"port"}


def test_a_port_without_readable_counters_is_left_out(tmp_path):
    _port(tmp_path, "mlx5_0", 1, "N/A (no PMA)", "N/A (no PMA)")
    _port(tmp_path, "mlx5_0", 2, "5", "5")
    assert read_infiniband(tmp_path) == {"mlx5_0/2": (20, 20)}


def test_no_infiniband_records_nothing_and_ports_that_appear_later_are_picked_up(tmp_path):
    collector = FabricCollector(sys_root=tmp_path)
    collector.start(CollectContext())
    assert collector.collect(1.0).metrics == []
    _port(tmp_path, "mlx5_0", 1, "1", "2")
    assert _values(collector.collect(2.0))[("ib:mlx5_0/1", "host.ib.tx_bytes")] == 8.0


_Io = namedtuple("_Io", "read_bytes write_bytes read_count write_count busy_time")


def test_disks_are_their_own_source_without_loop_or_ram_devices():
    b = BatchBuilder("disk", 1.0)
    add_disks(
        b,
        {
            "nvme0n1": _Io(4096, 8192, 1, 2, 1500),
            "loop0": _Io(1, 1, 1, 1, 1),
            "ram0": _Io(1, 1, 1, 1, 1),
            "zram0": _Io(1, 1, 1, 1, 1),
        },
    )
    values = _values(b.build())
    assert {e for e, _ in values} == {"disk:nvme0n1"}
    assert values[("disk:nvme0n1", "host.disk.read_bytes")] == 4096
    assert values[("disk:nvme0n1", "host.disk.busy_time")] == 1.5
    assert default_registry().kind_of("disk", "disk:nvme0n1") == "disk"


def test_disk_collector_reads_this_machines_disks():
    batch = DiskCollector().collect(1.0)
    assert batch.source == "disk"
    assert all(e.startswith("disk:") for e in batch.entities)


def test_the_host_source_reports_neither_disks_nor_fabric_ports():
    collector = HostCollector()
    collector.start(CollectContext())
    batch = collector.collect(1.0)
    assert not {m for m in batch.metrics if m.startswith(("host.disk.", "host.ib."))}
    assert "host.memory.used" in batch.metrics
