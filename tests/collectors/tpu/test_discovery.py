"""Chip discovery on fake sysfs trees, and ownership through real processes' open fds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collectors.sim.tpu.tree import write_tree
from collectors.tpu import discovery
from collectors.tpu.discovery import CHIP_TYPES, GIB

EXPECTED = {  # chip → (device id, subsystem, HBM GiB, devices per chip, vfio)
    "v2": ("0x0027", "0x004e", 8, 2, False),
    "v3": ("0x0027", "0x004f", 16, 2, False),
    "v4": ("0x005e", "0x0000", 32, 1, False),
    "v5e": ("0x0063", "0x0000", 16, 1, True),
    "v5p": ("0x0062", "0x0000", 95, 1, True),
    "v6e": ("0x006f", "0x0000", 32, 1, True),
    "7x": ("0x0076", "0x0000", 192, 2, True),
}


def _pci(root: Path, address: str, vendor: str, device: str, subsystem: str = "0x0000", group=None):
    d = root / "sys" / "bus" / "pci" / "devices" / address
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")
    (d / "subsystem_device").write_text(subsystem + "\n")
    if group is not None:
        (root / "sys" / "kernel" / "iommu_groups" / str(group)).mkdir(parents=True, exist_ok=True)
        os.symlink(f"../../../../kernel/iommu_groups/{group}", d / "iommu_group")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_chip_type_is_recognised_with_its_hbm_and_devices(tmp_path, name):
    device_id, subsystem, hbm_gib, per_chip, vfio = EXPECTED[name]
    assert discovery.chip_type_of(device_id, subsystem) is CHIP_TYPES[name]
    write_tree(tmp_path, CHIP_TYPES[name], 4)
    chips = discovery.discover(tmp_path / "sys", tmp_path / "dev")
    assert [c.entity for c in chips] == ["tpu0", "tpu1", "tpu2", "tpu3"]
    assert {c.type.name for c in chips} == {name}
    assert chips[0].type.hbm_bytes == hbm_gib * GIB
    assert [len(c.devices) for c in chips] == [per_chip] * 4
    devices = [d for c in chips for d in c.devices]
    assert [d.index for d in devices] == list(range(4 * per_chip))
    for d in devices:
        assert Path(d.dev_path).exists()
        if vfio:
            assert d.dev_path == f"{tmp_path}/dev/vfio/{d.iommu_group}"
        else:
            assert d.dev_path == f"{tmp_path}/dev/accel{d.chip}"


def test_two_device_chips_name_their_devices_as_parts(tmp_path):
    write_tree(tmp_path, CHIP_TYPES["7x"], 2)
    chips = discovery.discover(tmp_path / "sys", tmp_path / "dev")
    names = [discovery.device_entity(c, d) for c in chips for d in c.devices]
    assert names == ["tpu0/core0", "tpu0/core1", "tpu1/core0", "tpu1/core1"]
    assert chips[0].devices[1].pci_address == "0000:00:04.1"


def test_one_device_chips_are_their_own_device(tmp_path):
    write_tree(tmp_path, CHIP_TYPES["v5e"], 2)
    chips = discovery.discover(tmp_path / "sys", tmp_path / "dev")
    assert [discovery.device_entity(c, c.devices[0]) for c in chips] == ["tpu0", "tpu1"]


def test_other_vendors_unknown_ids_and_unreadable_entries_are_skipped(tmp_path):
    _pci(tmp_path, "0000:00:01.0", "0x10de", "0x2330")  # an NVIDIA GPU
    _pci(tmp_path, "0000:00:02.0", "0x1ae0", "0x9999")  # a Google device we do not know
    _pci(tmp_path, "0000:00:03.0", "0x1ae0", "0x0027", "0x0001")  # 0x0027, unknown subsystem
    (tmp_path / "sys/bus/pci/devices/0000:00:05.0").mkdir()  # no files at all
    _pci(tmp_path, "0000:00:10.0", "0x1ae0", "0x0063", group=7)
    chips = discovery.discover(tmp_path / "sys", tmp_path / "dev")
    assert [(c.type.name, c.pci_slot, c.devices[0].dev_path) for c in chips] == [
        ("v5e", "0000:00:10", f"{tmp_path}/dev/vfio/7")
    ]


def test_no_sysfs_means_no_chips(tmp_path):
    assert discovery.discover(tmp_path / "absent", tmp_path / "dev") == []


def test_vfio_chips_are_numbered_by_group_numerically_as_tpu_info_does(tmp_path):
    for slot, group in ((0x04, 10), (0x05, 9), (0x0A, 2)):
        _pci(tmp_path, f"0000:00:{slot:02x}.0", "0x1ae0", "0x006f", group=group)
    chips = discovery.discover(tmp_path / "sys", tmp_path / "dev")
    assert [c.devices[0].iommu_group for c in chips] == ["2", "9", "10"]


def test_accel_chips_keep_pci_order_in_hex(tmp_path):
    for slot in (0x0A, 0x04):
        _pci(tmp_path, f"0000:00:{slot:02x}.0", "0x1ae0", "0x005e", group=slot)
    chips = discovery.discover(tmp_path / "sys", tmp_path / "dev")
    assert [c.pci_slot for c in chips] == ["0000:00:04", "0000:00:0a"]


def test_a_child_process_holding_a_device_file_owns_that_chip(tmp_path):
    write_tree(tmp_path, CHIP_TYPES["v5e"], 4)
    chips = discovery.discover(tmp_path / "sys", tmp_path / "dev")
    held_file = chips[2].devices[0].dev_path
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; f=open(sys.argv[1]); print('ready', flush=True); time.sleep(30)",
            held_file,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        held = discovery.chips_held(chips, [child.pid, os.getpid()])
        assert held == {2: {child.pid}}
    finally:
        child.kill()
        child.wait()
    assert discovery.chips_held(chips, [child.pid]) == {}  # gone: holds nothing


def test_processes_we_cannot_read_hold_nothing(tmp_path):
    write_tree(tmp_path, CHIP_TYPES["v5e"], 1)
    chips = discovery.discover(tmp_path / "sys", tmp_path / "dev")
    assert discovery.chips_held(chips, [999_999_999], proc_root=tmp_path / "proc") == {}


def test_job_ownership_follows_new_processes_at_once_and_closed_files_within_5_s(tmp_path):
    from agent.source import CollectContext
    from collectors.tpu.collector import TpuCollector

    write_tree(tmp_path, CHIP_TYPES["v5e"], 2)
    env = {
        "ACCELWATCH_TPU_SYS_ROOT": str(tmp_path / "sys"),
        "ACCELWATCH_TPU_DEV_ROOT": str(tmp_path / "dev"),
        "ACCELWATCH_TPU_PROC_ROOT": "/proc",
        "ACCELWATCH_TPU_RUNTIME": "127.0.0.1:1",
        "ACCELWATCH_TPU_METADATA_URL": "off",
    }
    pids = {os.getpid()}
    c = TpuCollector(env=env)
    c.start(CollectContext(os.getpid(), lambda: frozenset(pids)))

    def held(now):
        b = c.collect(now)
        return {
            e: v for e, m, v in zip(b.entities, b.metrics, b.values) if m == "tpu.job.processes"
        }

    t = 1000.0
    assert held(t) == {"tpu0": 0, "tpu1": 0}
    script = (
        "import sys,time; fs=[open(p) for p in sys.argv[1:]]; print('ready', flush=True); "
        "time.sleep(30)"
    )
    files = [str(tmp_path / "dev/vfio/0"), str(tmp_path / "dev/vfio/1")]
    child = subprocess.Popen(
        [sys.executable, "-c", script, *files], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        pids.add(child.pid)
        assert held(t + 1) == {"tpu0": 1, "tpu1": 1}  # a new process: rescanned at once
    finally:
        child.kill()
        child.wait()
    assert held(t + 2)["tpu1"] == 1  # every chip held, same pids: the last scan stands...
    assert held(t + 7)["tpu1"] == 0  # ...for at most 5 s
    c.close()


def test_a_chip_not_yet_held_is_looked_for_every_tick(tmp_path):
    from agent.source import CollectContext
    from collectors.tpu.collector import TpuCollector

    write_tree(tmp_path, CHIP_TYPES["v5e"], 1)
    env = {
        "ACCELWATCH_TPU_SYS_ROOT": str(tmp_path / "sys"),
        "ACCELWATCH_TPU_DEV_ROOT": str(tmp_path / "dev"),
        "ACCELWATCH_TPU_PROC_ROOT": "/proc",
        "ACCELWATCH_TPU_RUNTIME": "127.0.0.1:1",
        "ACCELWATCH_TPU_METADATA_URL": "off",
    }
    c = TpuCollector(env=env)
    c.start(CollectContext(os.getpid(), lambda: frozenset([os.getpid()])))

    def held(now):
        b = c.collect(now)
        return [v for m, v in zip(b.metrics, b.values) if m == "tpu.job.processes"]

    assert held(1000.0) == [0]
    with open(tmp_path / "dev/vfio/0"):  # libtpu opens the chip a little after start
        assert held(1000.5) == [1]
    c.close()
