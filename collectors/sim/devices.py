"""Datasheet models of the GPUs the simulated NVML driver can pretend to be.

Numbers come from NVIDIA datasheets and from what `nvidia-smi -q` prints on
the real parts (memory totals as the driver reports them, default power
limits, max clocks). A feature flag set to False makes the matching NVML
query return NOT_SUPPORTED, the way the real driver answers on that part.
"""

from __future__ import annotations

from dataclasses import dataclass

import pynvml

# PCIe payload bandwidth per lane and direction, GB/s (after line coding).
PCIE_LANE_GBPS = {3: 0.985, 4: 1.969, 5: 3.938}

_DATACENTER_EVENTS = (
    pynvml.nvmlEventTypeSingleBitEccError
    | pynvml.nvmlEventTypeDoubleBitEccError
    | pynvml.nvmlEventTypePState
    | pynvml.nvmlEventTypeXidCriticalError
    | pynvml.nvmlEventTypeClock
)
_CONSUMER_EVENTS = (
    pynvml.nvmlEventTypePState | pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeClock
)


@dataclass(frozen=True, slots=True)
class MigProfile:
    """A GPU instance profile: `slices` of the 7 compute slices, its own memory."""

    name: str
    slices: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """One GPU part: identity, limits and which NVML features it answers."""

    key: str
    name: str
    short_name: str
    pci_device_id: int
    pci_subsystem_id: int
    memory_total_mib: int
    memory_reserved_mib: int
    hbm: bool
    power_limit_w: float
    power_min_w: float
    power_idle_w: float
    max_sm_clock_mhz: int
    idle_sm_clock_mhz: int
    mem_clock_mhz: int
    max_video_clock_mhz: int
    pcie_gen: int
    pcie_width: int
    nvlink_links: int
    nvlink_link_gbps: float
    temp_idle_c: float
    temp_slowdown_c: int
    temp_shutdown_c: int
    fan: bool
    ecc: bool
    remapped_rows: bool
    gpm: bool
    energy: bool
    pstate_busy: int
    pstate_idle: int
    util_period_s: float
    event_types: int
    compute_capability: tuple[int, int]
    mig_profiles: tuple[MigProfile, ...] = ()

    @property
    def memory_total_bytes(self) -> int:
        return self.memory_total_mib << 20

    @property
    def memory_reserved_bytes(self) -> int:
        return self.memory_reserved_mib << 20

    @property
    def pcie_max_gbps(self) -> float:
        """Payload bandwidth per direction of the full link."""
        return PCIE_LANE_GBPS[self.pcie_gen] * self.pcie_width

    @property
    def mig_capable(self) -> bool:
        return bool(self.mig_profiles)

    def mig_profile(self, name: str) -> MigProfile:
        for profile in self.mig_profiles:
            if profile.name == name:
                return profile
        raise KeyError(name)


_H100_MIG = (
    MigProfile("1g.10gb", 1, 9984),
    MigProfile("1g.20gb", 1, 20096),
    MigProfile("2g.20gb", 2, 20096),
    MigProfile("3g.40gb", 3, 40320),
    MigProfile("4g.40gb", 4, 40320),
    MigProfile("7g.80gb", 7, 81152),
)
_A100_MIG = (
    MigProfile("1g.5gb", 1, 4864),
    MigProfile("2g.10gb", 2, 9984),
    MigProfile("3g.20gb", 3, 19968),
    MigProfile("4g.20gb", 4, 19968),
    MigProfile("7g.40gb", 7, 40192),
)

MODELS: dict[str, DeviceModel] = {
    m.key: m
    for m in (
        DeviceModel(
            key="h100-sxm-80gb",
            name="NVIDIA H100 80GB HBM3",
            short_name="H100 SXM 80GB",
            pci_device_id=0x233010DE,
            pci_subsystem_id=0x16C110DE,
            memory_total_mib=81559,
            memory_reserved_mib=581,
            hbm=True,
            power_limit_w=700.0,
            power_min_w=200.0,
            power_idle_w=70.0,
            max_sm_clock_mhz=1980,
            idle_sm_clock_mhz=345,
            mem_clock_mhz=2619,
            max_video_clock_mhz=1755,
            pcie_gen=5,
            pcie_width=16,
            nvlink_links=18,
            nvlink_link_gbps=25.0,
            temp_idle_c=31.0,
            temp_slowdown_c=89,
            temp_shutdown_c=92,
            fan=False,
            ecc=True,
            remapped_rows=True,
            gpm=True,
            energy=True,
            pstate_busy=0,
            pstate_idle=0,
            util_period_s=1.0,
            event_types=_DATACENTER_EVENTS,
            compute_capability=(9, 0),
            mig_profiles=_H100_MIG,
        ),
        DeviceModel(
            key="a100-sxm-40gb",
            name="NVIDIA A100-SXM4-40GB",
            short_name="A100 SXM 40GB",
            pci_device_id=0x20B010DE,
            pci_subsystem_id=0x134F10DE,
            memory_total_mib=40960,
            memory_reserved_mib=448,
            hbm=True,
            power_limit_w=400.0,
            power_min_w=100.0,
            power_idle_w=55.0,
            max_sm_clock_mhz=1410,
            idle_sm_clock_mhz=210,
            mem_clock_mhz=1215,
            max_video_clock_mhz=1290,
            pcie_gen=4,
            pcie_width=16,
            nvlink_links=12,
            nvlink_link_gbps=25.0,
            temp_idle_c=30.0,
            temp_slowdown_c=89,
            temp_shutdown_c=92,
            fan=False,
            ecc=True,
            remapped_rows=True,
            gpm=False,
            energy=True,
            pstate_busy=0,
            pstate_idle=0,
            util_period_s=1.0,
            event_types=_DATACENTER_EVENTS,
            compute_capability=(8, 0),
            mig_profiles=_A100_MIG,
        ),
        DeviceModel(
            key="l4",
            name="NVIDIA L4",
            short_name="L4 24GB",
            pci_device_id=0x27B810DE,
            pci_subsystem_id=0x16CA10DE,
            memory_total_mib=23034,
            memory_reserved_mib=334,
            hbm=False,
            power_limit_w=72.0,
            power_min_w=40.0,
            power_idle_w=16.0,
            max_sm_clock_mhz=2040,
            idle_sm_clock_mhz=210,
            mem_clock_mhz=6251,
            max_video_clock_mhz=1770,
            pcie_gen=4,
            pcie_width=16,
            nvlink_links=0,
            nvlink_link_gbps=0.0,
            temp_idle_c=36.0,
            temp_slowdown_c=90,
            temp_shutdown_c=95,
            fan=False,
            ecc=True,
            remapped_rows=True,
            gpm=False,
            energy=True,
            pstate_busy=0,
            pstate_idle=8,
            util_period_s=1.0,
            event_types=_DATACENTER_EVENTS,
            compute_capability=(8, 9),
        ),
        DeviceModel(
            key="t4",
            name="Tesla T4",
            short_name="T4 16GB",
            pci_device_id=0x1EB810DE,
            pci_subsystem_id=0x12A210DE,
            memory_total_mib=15360,
            memory_reserved_mib=0,
            hbm=False,
            power_limit_w=70.0,
            power_min_w=60.0,
            power_idle_w=10.0,
            max_sm_clock_mhz=1590,
            idle_sm_clock_mhz=300,
            mem_clock_mhz=5001,
            max_video_clock_mhz=1470,
            pcie_gen=3,
            pcie_width=16,
            nvlink_links=0,
            nvlink_link_gbps=0.0,
            temp_idle_c=34.0,
            temp_slowdown_c=93,
            temp_shutdown_c=96,
            fan=False,
            ecc=True,
            remapped_rows=False,
            gpm=False,
            energy=True,
            pstate_busy=0,
            pstate_idle=8,
            util_period_s=1.0,
            event_types=_DATACENTER_EVENTS,
            compute_capability=(7, 5),
        ),
        DeviceModel(
            key="rtx-4090",
            name="NVIDIA GeForce RTX 4090",
            short_name="GeForce RTX 4090",
            pci_device_id=0x268410DE,
            pci_subsystem_id=0x16F310DE,
            memory_total_mib=24564,
            memory_reserved_mib=308,
            hbm=False,
            power_limit_w=450.0,
            power_min_w=150.0,
            power_idle_w=21.0,
            max_sm_clock_mhz=3105,
            idle_sm_clock_mhz=210,
            mem_clock_mhz=10501,
            max_video_clock_mhz=2415,
            pcie_gen=4,
            pcie_width=16,
            nvlink_links=0,
            nvlink_link_gbps=0.0,
            temp_idle_c=33.0,
            temp_slowdown_c=87,
            temp_shutdown_c=92,
            fan=True,
            ecc=False,
            remapped_rows=False,
            gpm=False,
            energy=True,
            pstate_busy=2,
            pstate_idle=8,
            util_period_s=1.0 / 6.0,
            event_types=_CONSUMER_EVENTS,
            compute_capability=(8, 9),
        ),
    )
}


def get_model(key: str) -> DeviceModel:
    """The model for `key`; KeyError lists the known keys."""
    try:
        return MODELS[key]
    except KeyError:
        raise KeyError(f"unknown GPU model {key!r} (known: {', '.join(MODELS)})") from None
