"""GPU metrics (source ``nvml``). Entities: ``gpu0``, ``gpu0/mig1``, ``gpu0/nvlink3``, ``gpu0/pid42``.

Utilizations are ratios 0..1 over the sample period. OpenTelemetry names follow the
``hw.gpu.*`` / ``hw.*`` semantic conventions where one exists; ``dcgm_name`` gives the
dcgm-exporter field so existing Grafana dashboards keep working.
"""

from __future__ import annotations

from agent.catalog import metric

SOURCE = "nvml"

#: Clock event (throttle) reason flags: metric suffix → NVML bit.
CLOCK_EVENT_FLAGS = {
    "gpu_idle": 0x1,
    "applications_clocks": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
    "display_clocks": 0x100,
}


#: The role each GPU metric plays (agent/catalog/roles.py); analysis and viewers read roles.
ROLE_OF = {
    "gpu.utilization": "accelerator.busy",
    "gpu.sm.activity": "accelerator.compute.activity",
    "gpu.tensor.activity": "accelerator.tensor.activity",
    "gpu.fp16.activity": "accelerator.fp16.activity",
    "gpu.fp32.activity": "accelerator.fp32.activity",
    "gpu.memory.utilization": "accelerator.memory.busy",
    "gpu.dram.activity": "accelerator.memory.bandwidth",
    "gpu.memory.used": "accelerator.memory.used",
    "gpu.memory.total": "accelerator.memory.total",
    "gpu.job.memory": "accelerator.job.memory",
    "gpu.job.processes": "accelerator.job.processes",
    "gpu.power": "accelerator.power",
    "gpu.power.limit": "accelerator.power.limit",
    "gpu.energy": "accelerator.energy",
    "gpu.temperature": "accelerator.temperature",
    "gpu.clock.sm": "accelerator.clock",
    "gpu.clock.sm.max": "accelerator.clock.max",
    "gpu.clock.memory": "accelerator.clock.memory",
    "gpu.clock_event.gpu_idle": "accelerator.throttle.idle",
    "gpu.clock_event.sw_power_cap": "accelerator.throttle.power",
    "gpu.clock_event.hw_power_brake": "accelerator.throttle.power_brake",
    "gpu.clock_event.hw_slowdown": "accelerator.throttle.slowdown",
    "gpu.clock_event.sw_thermal": "accelerator.throttle.thermal",
    "gpu.clock_event.hw_thermal": "accelerator.throttle.thermal_hw",
    "gpu.pcie.tx_throughput": "accelerator.host_link.tx",
    "gpu.pcie.rx_throughput": "accelerator.host_link.rx",
    "gpu.pcie.link.gen": "accelerator.host_link.gen",
    "gpu.pcie.link.gen.max": "accelerator.host_link.gen.max",
    "gpu.pcie.link.width": "accelerator.host_link.width",
    "gpu.pcie.link.width.max": "accelerator.host_link.width.max",
    "gpu.pcie.replays": "accelerator.host_link.replays",
    "gpu.nvlink.tx_throughput": "accelerator.peer_link.tx",
    "gpu.nvlink.rx_throughput": "accelerator.peer_link.rx",
    "gpu.nvlink.active_links": "accelerator.peer_link.active",
    "gpu.xid": "accelerator.fault",
    "gpu.ecc.volatile.uncorrected": "accelerator.ecc.uncorrected",
    "gpu.remapped_rows.uncorrectable": "accelerator.memory.remap.uncorrectable",
    "gpu.remapped_rows.pending": "accelerator.memory.remap.pending",
    "gpu.remapped_rows.failure": "accelerator.memory.remap.failure",
}


def _m(name, unit, kind, description, **kw):
    return metric(name, unit, kind, description, source=SOURCE, role=ROLE_OF.get(name), **kw)


METRICS = [
    # -- utilization and memory
    _m(
        "gpu.utilization",
        "1",
        "gauge",
        "Share of the sample period during which one or more kernels ran.",
        otel="hw.gpu.utilization",
        attrs={"hw.gpu.task": "general"},
        dcgm="DCGM_FI_DEV_GPU_UTIL",
    ),
    _m(
        "gpu.memory.utilization",
        "1",
        "gauge",
        "Share of the sample period during which device memory was read or written.",
        otel="hw.gpu.memory.utilization",
        dcgm="DCGM_FI_DEV_MEM_COPY_UTIL",
    ),
    _m(
        "gpu.memory.used",
        "By",
        "gauge",
        "Device memory in use.",
        otel="hw.gpu.memory.usage",
        dcgm="DCGM_FI_DEV_FB_USED",
    ),
    _m(
        "gpu.memory.total",
        "By",
        "gauge",
        "Device memory size.",
        otel="hw.gpu.memory.limit",
        dcgm="DCGM_FI_DEV_FB_TOTAL",
    ),
    _m("gpu.memory.free", "By", "gauge", "Device memory free.", dcgm="DCGM_FI_DEV_FB_FREE"),
    # -- thermals, power, energy
    _m(
        "gpu.temperature",
        "Cel",
        "gauge",
        "GPU core temperature.",
        otel="hw.temperature",
        dcgm="DCGM_FI_DEV_GPU_TEMP",
    ),
    _m(
        "gpu.power",
        "W",
        "gauge",
        "Power draw (averaged by the driver).",
        otel="hw.power",
        dcgm="DCGM_FI_DEV_POWER_USAGE",
    ),
    _m(
        "gpu.power.instant",
        "W",
        "gauge",
        "Instantaneous power draw.",
        dcgm="DCGM_FI_DEV_POWER_USAGE_INSTANT",
    ),
    _m(
        "gpu.power.limit",
        "W",
        "gauge",
        "Enforced power limit.",
        otel="hw.gpu.power.limit",
        dcgm="DCGM_FI_DEV_POWER_MGMT_LIMIT",
    ),
    _m(
        "gpu.energy",
        "J",
        "counter",
        "Energy consumed since the driver was loaded.",
        otel="hw.energy",
        dcgm="DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    ),
    _m(
        "gpu.fan.speed",
        "1",
        "gauge",
        "Fan speed as a share of its maximum.",
        dcgm="DCGM_FI_DEV_FAN_SPEED",
    ),
    # -- clocks and clock events
    _m("gpu.clock.sm", "MHz", "gauge", "SM clock.", dcgm="DCGM_FI_DEV_SM_CLOCK"),
    _m("gpu.clock.sm.max", "MHz", "gauge", "Maximum SM clock."),
    _m("gpu.clock.memory", "MHz", "gauge", "Memory clock.", dcgm="DCGM_FI_DEV_MEM_CLOCK"),
    _m("gpu.clock.memory.max", "MHz", "gauge", "Maximum memory clock."),
    _m("gpu.pstate", "1", "gauge", "Performance state (0 = P0, fastest; 15 = P15)."),
    _m(
        "gpu.clock_events",
        "1",
        "gauge",
        "Clock event (throttle) reasons bitmask as NVML reports it.",
        dcgm="DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
    ),
    *[
        _m(
            f"gpu.clock_event.{flag}",
            "1",
            "gauge",
            f"1 while the '{flag.replace('_', ' ')}' clock event reason is active, else 0.",
        )
        for flag in CLOCK_EVENT_FLAGS
    ],
    # -- PCIe
    _m(
        "gpu.pcie.tx_bytes",
        "By",
        "counter",
        "Bytes sent by the GPU over PCIe.",
        otel="hw.gpu.io",
        attrs={"network.io.direction": "transmit"},
        dcgm="DCGM_FI_PROF_PCIE_TX_BYTES",
    ),
    _m(
        "gpu.pcie.rx_bytes",
        "By",
        "counter",
        "Bytes received by the GPU over PCIe.",
        otel="hw.gpu.io",
        attrs={"network.io.direction": "receive"},
        dcgm="DCGM_FI_PROF_PCIE_RX_BYTES",
    ),
    _m("gpu.pcie.tx_throughput", "By/s", "gauge", "PCIe send rate over the interval."),
    _m("gpu.pcie.rx_throughput", "By/s", "gauge", "PCIe receive rate over the interval."),
    _m(
        "gpu.pcie.link.gen",
        "1",
        "gauge",
        "Current PCIe link generation.",
        dcgm="DCGM_FI_DEV_PCIE_LINK_GEN",
    ),
    _m("gpu.pcie.link.gen.max", "1", "gauge", "Maximum PCIe link generation."),
    _m(
        "gpu.pcie.link.width",
        "1",
        "gauge",
        "Current PCIe link width (lanes).",
        dcgm="DCGM_FI_DEV_PCIE_LINK_WIDTH",
    ),
    _m("gpu.pcie.link.width.max", "1", "gauge", "Maximum PCIe link width (lanes)."),
    _m(
        "gpu.pcie.replays",
        "{replay}",
        "counter",
        "PCIe replay counter.",
        dcgm="DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    ),
    # -- NVLink (entity gpuN for the total, gpuN/nvlinkL per link)
    _m(
        "gpu.nvlink.tx_bytes",
        "By",
        "counter",
        "Bytes sent over NVLink.",
        dcgm="DCGM_FI_PROF_NVLINK_TX_BYTES",
    ),
    _m(
        "gpu.nvlink.rx_bytes",
        "By",
        "counter",
        "Bytes received over NVLink.",
        dcgm="DCGM_FI_PROF_NVLINK_RX_BYTES",
    ),
    _m("gpu.nvlink.tx_throughput", "By/s", "gauge", "NVLink send rate over the interval."),
    _m("gpu.nvlink.rx_throughput", "By/s", "gauge", "NVLink receive rate over the interval."),
    _m("gpu.nvlink.active_links", "{link}", "gauge", "NVLinks in the active state."),
    # -- GPM profiling (Hopper and later)
    _m(
        "gpu.sm.activity",
        "1",
        "gauge",
        "Share of time an SM had at least one warp resident, averaged over SMs.",
        dcgm="DCGM_FI_PROF_SM_ACTIVE",
    ),
    _m(
        "gpu.sm.occupancy",
        "1",
        "gauge",
        "Resident warps as a share of the SM maximum.",
        dcgm="DCGM_FI_PROF_SM_OCCUPANCY",
    ),
    _m(
        "gpu.tensor.activity",
        "1",
        "gauge",
        "Share of cycles any tensor pipe was active.",
        dcgm="DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    ),
    _m(
        "gpu.dram.activity",
        "1",
        "gauge",
        "Share of cycles device memory was busy (bandwidth).",
        dcgm="DCGM_FI_PROF_DRAM_ACTIVE",
    ),
    _m(
        "gpu.fp16.activity",
        "1",
        "gauge",
        "Share of cycles the FP16 pipe was active.",
        dcgm="DCGM_FI_PROF_PIPE_FP16_ACTIVE",
    ),
    _m(
        "gpu.fp32.activity",
        "1",
        "gauge",
        "Share of cycles the FP32 pipe was active.",
        dcgm="DCGM_FI_PROF_PIPE_FP32_ACTIVE",
    ),
    _m(
        "gpu.fp64.activity",
        "1",
        "gauge",
        "Share of cycles the FP64 pipe was active.",
        dcgm="DCGM_FI_PROF_PIPE_FP64_ACTIVE",
    ),
    _m(
        "gpu.gpm.pcie.tx_throughput",
        "By/s",
        "gauge",
        "PCIe send rate measured by GPM over the interval (cross-checks the byte counters).",
    ),
    _m(
        "gpu.gpm.pcie.rx_throughput",
        "By/s",
        "gauge",
        "PCIe receive rate measured by GPM over the interval.",
    ),
    _m(
        "gpu.gpm.nvlink.tx_throughput",
        "By/s",
        "gauge",
        "NVLink send rate, all links, measured by GPM over the interval.",
    ),
    _m(
        "gpu.gpm.nvlink.rx_throughput",
        "By/s",
        "gauge",
        "NVLink receive rate, all links, measured by GPM over the interval.",
    ),
    # -- health
    _m(
        "gpu.ecc.volatile.corrected",
        "{error}",
        "counter",
        "Corrected ECC errors since the last driver reload.",
        otel="hw.errors",
        attrs={"error.type": "ecc_corrected"},
        dcgm="DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
    ),
    _m(
        "gpu.ecc.volatile.uncorrected",
        "{error}",
        "counter",
        "Uncorrected ECC errors since the last driver reload.",
        otel="hw.errors",
        attrs={"error.type": "ecc_uncorrected"},
        dcgm="DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    ),
    _m(
        "gpu.ecc.aggregate.corrected",
        "{error}",
        "counter",
        "Corrected ECC errors over the GPU's lifetime.",
        dcgm="DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
    ),
    _m(
        "gpu.ecc.aggregate.uncorrected",
        "{error}",
        "counter",
        "Uncorrected ECC errors over the GPU's lifetime.",
        dcgm="DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
    ),
    _m(
        "gpu.remapped_rows.correctable",
        "{row}",
        "gauge",
        "Rows remapped for correctable errors.",
        dcgm="DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    ),
    _m(
        "gpu.remapped_rows.uncorrectable",
        "{row}",
        "gauge",
        "Rows remapped for uncorrectable errors.",
        dcgm="DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    ),
    _m("gpu.remapped_rows.pending", "1", "gauge", "1 if a row remap waits for a GPU reset."),
    _m(
        "gpu.remapped_rows.failure",
        "1",
        "gauge",
        "1 if a row remap has failed.",
        dcgm="DCGM_FI_DEV_ROW_REMAP_FAILURE",
    ),
    _m(
        "gpu.xid",
        "{event}",
        "counter",
        "XID error events seen during the run.",
        otel="hw.errors",
        attrs={"error.type": "xid"},
        dcgm="DCGM_FI_DEV_XID_ERRORS",
    ),
    # -- the job's share
    _m("gpu.job.memory", "By", "gauge", "Device memory held by the watched job's processes."),
    _m("gpu.job.processes", "{process}", "gauge", "The watched job's processes on the GPU."),
    _m(
        "gpu.process.memory", "By", "gauge", "Device memory used by one process (entity gpuN/pidP)."
    ),
    _m(
        "gpu.process.sm_utilization",
        "1",
        "gauge",
        "Share of the period the process ran kernels (entity gpuN/pidP).",
    ),
    _m(
        "gpu.process.memory_utilization",
        "1",
        "gauge",
        "Share of the period the process used the memory controller (entity gpuN/pidP).",
    ),
]
