"""A fake sysfs / dev / proc tree of a TPU VM, as discovery and ownership read them.

``<root>/sys/bus/pci/devices/0000:00:04.0/{vendor,device,subsystem_device,iommu_group}``,
``<root>/dev/vfio/N`` (v5e on) or ``<root>/dev/accelN`` (before), and for the job's pids
``<root>/proc/<pid>/fd/<n>`` links to the device files they hold. Dirs 0700, files 0600.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from collectors.tpu.discovery import GOOGLE_PCI_VENDOR, V2, V3, ChipType

DEVICE_IDS = {"v2": "0x0027", "v3": "0x0027", "v4": "0x005e", "v5e": "0x0063",
              "v5p": "0x0062", "v6e": "0x006f", "7x": "0x0076"}  # fmt: skip
SUBSYSTEM = {V2.name: "0x004e", V3.name: "0x004f"}


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def write_tree(root: str | Path, chip: ChipType, chips: int, *, first_group: int = 0) -> list[str]:
    """Write ``chips`` chips of type ``chip`` under ``root``; returns their device files."""
    root = Path(root)
    pci = root / "sys" / "bus" / "pci" / "devices"
    groups = root / "sys" / "kernel" / "iommu_groups"
    for d in (pci, groups, root / "dev" / "vfio"):
        _mkdir(d)
    functions = chip.devices_per_chip if chip.vfio else 1
    files: list[str] = []
    group = first_group
    for c in range(chips):
        for f in range(functions):
            dev = pci / f"0000:00:{4 + c:02x}.{f}"
            _mkdir(dev)
            _write(dev / "vendor", GOOGLE_PCI_VENDOR)
            _write(dev / "device", DEVICE_IDS[chip.name])
            _write(dev / "subsystem_device", SUBSYSTEM.get(chip.name, "0x0000"))
            _mkdir(groups / str(group))
            link = dev / "iommu_group"
            if not link.is_symlink():
                os.symlink(f"../../../../kernel/iommu_groups/{group}", link)
            path = (
                root
                / "dev"
                / ("vfio" if chip.vfio else "")
                / (str(group) if chip.vfio else f"accel{c}")
            )
            if chip.vfio or f == 0:
                _write(path, "")
                files.append(str(path))
            group += 1
    return files


def hold(root: str | Path, pid: int, files: Iterable[str], *, first_fd: int = 10) -> None:
    """Make ``<root>/proc/<pid>/fd`` show ``pid`` holding ``files`` open."""
    fd_dir = Path(root) / "proc" / str(pid) / "fd"
    _mkdir(fd_dir)
    for i, target in enumerate(files):
        link = fd_dir / str(first_fd + i)
        if link.is_symlink():
            link.unlink()
        os.symlink(target, link)
