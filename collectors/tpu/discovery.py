"""Which TPU chips this host has and which of them the watched job holds, as libtpu sees them.

Pure functions over injected roots (``sys_root``, ``dev_root``, ``proc_root``), so tests build a
fake sysfs tree: a chip is a PCI device of Google's vendor id whose ``device`` (and, for v2/v3,
``subsystem_device``) names the generation; a chip with two devices (v2, v3, TPU7x) shows them
as PCI functions of one slot (``0000:00:04.0``, ``0000:00:04.1``). Missing or unreadable files
are absent devices, never errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

GOOGLE_PCI_VENDOR = "0x1ae0"
GIB = 1 << 30


@dataclass(frozen=True)
class ChipType:
    """One TPU generation: its name, HBM per chip and devices (TensorCores seen by libtpu) per chip."""

    name: str
    hbm_bytes: int
    devices_per_chip: int
    #: From v5e on each device is a VFIO group (``/dev/vfio/N``); before, ``/dev/accelN``.
    vfio: bool


V2 = ChipType("v2", 8 * GIB, 2, vfio=False)
V3 = ChipType("v3", 16 * GIB, 2, vfio=False)
V4 = ChipType("v4", 32 * GIB, 1, vfio=False)
V5E = ChipType("v5e", 16 * GIB, 1, vfio=True)
V5P = ChipType("v5p", 95 * GIB, 1, vfio=True)
V6E = ChipType("v6e", 32 * GIB, 1, vfio=True)
TPU7X = ChipType("7x", 192 * GIB, 2, vfio=True)

CHIP_TYPES = {t.name: t for t in (V2, V3, V4, V5E, V5P, V6E, TPU7X)}
_BY_DEVICE_ID = {"0x005e": V4, "0x0063": V5E, "0x0062": V5P, "0x006f": V6E, "0x0076": TPU7X}
_BY_SUBSYSTEM_0027 = {"0x004e": V2, "0x004f": V3}


def chip_type_of(device_id: str, subsystem_id: str = "") -> ChipType | None:
    """The generation of a PCI device id (v2 and v3 share ``0x0027``), or None if not a TPU."""
    device_id = device_id.strip().lower()
    if device_id == "0x0027":
        return _BY_SUBSYSTEM_0027.get(subsystem_id.strip().lower())
    return _BY_DEVICE_ID.get(device_id)


@dataclass(frozen=True)
class TpuDevice:
    """One device libtpu addresses (a chip, or one TensorCore of a two-device chip)."""

    index: int  # libtpu's device id: position in PCI order across the host
    chip: int
    core: int  # index within the chip
    pci_address: str
    iommu_group: str | None
    dev_path: str  # the file a process opens to use it


@dataclass(frozen=True)
class TpuChip:
    index: int
    type: ChipType
    pci_slot: str
    devices: tuple[TpuDevice, ...]

    @property
    def entity(self) -> str:
        return f"tpu{self.index}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _group_key(functions: list[tuple[int, str, ChipType, str | None]]) -> int:
    """VFIO chips sort by their first group; others keep PCI order (key 0, a stable sort)."""
    if not functions[0][2].vfio:
        return 0
    groups = [int(g) for *_, g in functions if g is not None and g.isdigit()]
    return min(groups) if groups else 1 << 30


def discover(sys_root: str | Path = "/sys", dev_root: str | Path = "/dev") -> list[TpuChip]:
    """Every TPU chip under ``<sys_root>/bus/pci/devices``, in PCI order, with its devices.

    Chips of an unknown device id are skipped (a newer generation we do not know yet); a host
    mixing generations keeps them all, each with its own type.
    """
    base = Path(sys_root) / "bus" / "pci" / "devices"
    try:
        entries = sorted(os.listdir(base))  # fixed-width hex: lexical is PCI order
    except OSError:
        return []
    slots: dict[str, list[tuple[int, str, ChipType, str | None]]] = {}
    for address in entries:
        path = base / address
        if _read(path / "vendor") != GOOGLE_PCI_VENDOR:
            continue
        kind = chip_type_of(_read(path / "device") or "", _read(path / "subsystem_device") or "")
        if kind is None:
            continue
        try:
            group: str | None = os.path.basename(os.readlink(path / "iommu_group"))
        except OSError:
            group = None
        slot, _, function = address.rpartition(".")
        func = int(function) if function.isdigit() else 0
        slots.setdefault(slot or address, []).append((func, address, kind, group))

    # libtpu (and tpu-info) number VFIO chips by their group, /dev/vfio/N, numerically
    ordered = sorted(slots.items(), key=lambda kv: _group_key(kv[1]))
    chips: list[TpuChip] = []
    device_index = 0
    accel_index = 0
    dev = str(dev_root).rstrip("/")
    for chip_index, (slot, functions) in enumerate(ordered):
        functions.sort()
        kind = functions[0][2]
        devices = []
        if kind.vfio:
            # one VFIO group per PCI function; a function is one device
            for core, (_, address, _, group) in enumerate(functions):
                path = f"{dev}/vfio/{group}" if group is not None else ""
                devices.append(TpuDevice(device_index, chip_index, core, address, group, path))
                device_index += 1
        else:
            # one accel file per chip, its devices are the chip's TensorCores
            path = f"{dev}/accel{accel_index}"
            accel_index += 1
            address, group = functions[0][1], functions[0][3]
            for core in range(kind.devices_per_chip):
                devices.append(TpuDevice(device_index, chip_index, core, address, group, path))
                device_index += 1
        chips.append(TpuChip(chip_index, kind, slot, tuple(devices)))
    return chips


def device_entity(chip: TpuChip, device: TpuDevice) -> str:
    """``tpu3`` for a one-device chip, ``tpu3/core1`` for a device of a two-device chip."""
    return chip.entity if len(chip.devices) == 1 else f"{chip.entity}/core{device.core}"


def open_device_files(pids: Iterable[int], proc_root: str | Path = "/proc") -> dict[str, set[int]]:
    """Device file → the pids (of ``pids``) holding it open, from ``<proc>/<pid>/fd`` links.

    A process that exited or that we may not read is skipped: it holds nothing we can see.
    """
    held: dict[str, set[int]] = {}
    proc = str(proc_root)
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd/"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd_dir + fd)
            except OSError:
                continue
            held.setdefault(target, set()).add(pid)
    return held


def chips_held(
    chips: Iterable[TpuChip], pids: Iterable[int], proc_root: str | Path = "/proc"
) -> dict[int, set[int]]:
    """Chip index → pids of the job that hold one of its device files open."""
    held = open_device_files(pids, proc_root)
    out: dict[int, set[int]] = {}
    for chip in chips:
        for device in chip.devices:
            owners = held.get(device.dev_path)
            if device.dev_path and owners:
                out.setdefault(chip.index, set()).update(owners)
    return out
