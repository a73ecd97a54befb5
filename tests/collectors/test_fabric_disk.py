"""Disks are a source of their own (psutil's diskstats); the host source reports no disk or port."""

from __future__ import annotations

from collections import namedtuple

from agent.model import BatchBuilder
from agent.registry import default_registry
from agent.source import CollectContext
from collectors.disk import DiskCollector, add_disks
from collectors.host import HostCollector


def _values(batch) -> dict[tuple[str, str], float]:
    return {(e, m): v for e, m, v in zip(batch.entities, batch.metrics, batch.values)}


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


def test_host_memory_from_one_meminfo_and_vmstat_read_matches_psutil():
    import psutil

    from collectors.host import memory

    total, available, swap_total, swap_used, swap_in, swap_out = memory()
    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    assert (total, swap_total) == (vm.total, sw.total)
    assert abs(available - vm.available) < 64 * 2**20  # read a moment apart
    assert abs(swap_used - sw.used) < 64 * 2**20
    assert 0 <= swap_in <= sw.sin and 0 <= swap_out <= sw.sout


def test_host_memory_falls_back_to_psutil_where_procfs_lacks_a_field(tmp_path):
    import psutil

    from collectors.host import memory

    (tmp_path / "meminfo").write_text("MemTotal:       1024 kB\n")  # no MemAvailable, no swap
    (tmp_path / "vmstat").write_text("nr_free_pages 1\n")
    assert memory(str(tmp_path))[0] == psutil.virtual_memory().total
