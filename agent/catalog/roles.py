"""The role vocabulary: what a metric means whatever driver measured it, and the entity kinds.

A source's metric declares ``role=`` when it plays one of these; analysis, the TUI, the report and
the exporters select metrics by role and entities by kind, so a TPU (or any third-party
accelerator) is analysed and drawn the day its source declares its metrics with these roles.
Units are those of the role (ratios 0..1, bytes, watts...); a source converts to them.
"""

from __future__ import annotations

from types import MappingProxyType

#: Entity kinds a source may declare.
ENTITY_KINDS = MappingProxyType(
    {
        "host": "the machine",
        "cpu": "one logical CPU",
        "process": "a process of the watched tree",
        "accelerator": "a GPU, a TPU chip, any device the job computes on",
        "accelerator.part": "a slice of an accelerator (MIG instance, TPU core)",
        "accelerator.process": "one process's use of one accelerator",
        "link": "a device-to-device link (NVLink, ICI)",
        "port": "a fabric port (InfiniBand, RoCE)",
        "interface": "a network interface",
        "disk": "a block device",
        "mount": "a filesystem the job uses",
        "mount.op": "one operation type (READ, GETATTR ...) on a network filesystem",
        "rank": "a training rank reporting steps",
        "accelerator.runtime": "the host's accelerator runtime (libtpu): its state, per-host latencies",
    }
)

#: Latency distributions a runtime reports (stem → what is timed), each recorded as the roles
#: ``accelerator.<stem>.latency.p50/.p90/.p99`` (seconds) and ``.count`` (operations, counter).
#: They sit on the chips (``exec``) or on the host's runtime entity (transfers, collectives).
LATENCIES = MappingProxyType(
    {
        "exec": "device program (HLO) execution time",
        "h2d": "host → device transfer latency",
        "d2h": "device → host transfer latency",
        "collective": "collective end-to-end latency",
        "dcn": "cross-slice (data-centre network) transfer latency",
    }
)
LATENCY_QUANTILES = ("p50", "p90", "p99")


def latency_role(stem: str, quantile: str) -> str:
    """The role of one quantile (``p99``) or the ``count`` of a latency distribution."""
    if stem not in LATENCIES or quantile not in (*LATENCY_QUANTILES, "count"):
        raise KeyError(f"no latency role {stem}.{quantile}")
    return f"accelerator.{stem}.latency.{quantile}"


def _latency_roles() -> dict[str, tuple[str, str]]:
    out = {}
    for stem, text in LATENCIES.items():
        for quantile in LATENCY_QUANTILES:
            out[latency_role(stem, quantile)] = ("s", f"{text}, {quantile} of the last interval")
        out[latency_role(stem, "count")] = ("1", f"{text}: operations measured (counter)")
    return out


#: Role → (unit, meaning). Accelerator roles apply to entities of kind ``accelerator``.
ROLES = MappingProxyType(
    {
        # -- accelerator activity
        "accelerator.busy": ("1", "share of time any work ran (GPU utilization, TPU duty cycle)"),
        "accelerator.compute.activity": ("1", "share of compute units busy (SM activity)"),
        "accelerator.tensor.activity": ("1", "share of time the matrix units were busy"),
        "accelerator.fp16.activity": ("1", "FP16 pipe activity"),
        "accelerator.fp32.activity": ("1", "FP32 pipe activity"),
        "accelerator.memory.busy": ("1", "share of time device memory was read or written"),
        "accelerator.memory.bandwidth": ("1", "memory bandwidth used, share of peak (DRAM, HBM)"),
        "accelerator.queue.size": ("1", "programs queued on the device"),
        # -- memory
        "accelerator.memory.used": ("By", "device memory in use"),
        "accelerator.memory.total": ("By", "device memory size"),
        "accelerator.job.memory": ("By", "device memory held by the watched job"),
        "accelerator.job.processes": ("1", "processes of the watched job on the device"),
        # -- power, thermals, clocks
        "accelerator.power": ("W", "power draw"),
        "accelerator.power.limit": ("W", "enforced power limit"),
        "accelerator.energy": ("J", "cumulative energy"),
        "accelerator.temperature": ("Cel", "core temperature"),
        "accelerator.clock": ("MHz", "compute clock"),
        "accelerator.clock.max": ("MHz", "maximum compute clock"),
        "accelerator.clock.memory": ("MHz", "memory clock"),
        "accelerator.throttle.idle": ("1", "clocks lowered because the device is idle"),
        "accelerator.throttle.power": ("1", "clocks lowered by the power cap"),
        "accelerator.throttle.power_brake": ("1", "clocks lowered by an external power brake"),
        "accelerator.throttle.slowdown": ("1", "hardware slowdown"),
        "accelerator.throttle.thermal": ("1", "clocks lowered by software thermal control"),
        "accelerator.throttle.thermal_hw": ("1", "clocks lowered by hardware thermal control"),
        # -- links
        "accelerator.host_link.tx": ("By/s", "device → host transfer rate (PCIe)"),
        "accelerator.host_link.rx": ("By/s", "host → device transfer rate (PCIe)"),
        "accelerator.host_link.gen": ("1", "host link generation"),
        "accelerator.host_link.gen.max": ("1", "maximum host link generation"),
        "accelerator.host_link.width": ("1", "host link lanes"),
        "accelerator.host_link.width.max": ("1", "maximum host link lanes"),
        "accelerator.host_link.replays": ("1", "host link replays (counter)"),
        "accelerator.peer_link.tx": ("By/s", "device → peers transfer rate (NVLink, ICI)"),
        "accelerator.peer_link.rx": ("By/s", "peers → device transfer rate"),
        "accelerator.peer_link.active": ("1", "active peer links"),
        # -- health
        "accelerator.fault": ("1", "last fatal device error code (XID)"),
        "accelerator.ecc.uncorrected": ("1", "uncorrected memory errors (counter)"),
        "accelerator.memory.remap.uncorrectable": ("1", "rows remapped for uncorrectable errors"),
        "accelerator.memory.remap.pending": ("1", "a row remap waits for a reset"),
        "accelerator.memory.remap.failure": ("1", "a row remap failed"),
        # -- fabric and storage
        "port.rx_bytes": ("By", "bytes received on a fabric port (counter)"),
        "port.tx_bytes": ("By", "bytes sent on a fabric port (counter)"),
        "port.rate": ("By/s", "a fabric port's line rate"),
        "port.rate.max": ("By/s", "the highest line rate the port reached"),
        "port.rx_packets": ("1", "packets received on a fabric port (counter)"),
        "port.tx_packets": ("1", "packets sent on a fabric port (counter)"),
        "port.state": ("1", "logical port state (4 = ACTIVE)"),
        "port.phys_state": ("1", "physical port state (5 = LinkUp)"),
        "port.up": ("1", "1 while the port is ACTIVE and LinkUp"),
        "port.errors": ("1", "a fabric port's error counters summed (counter)"),
        "port.xmit_wait": ("1", "ticks a port waited for flow-control credits (counter)"),
        "port.cnp": ("1", "congestion notification packets sent or handled (counter)"),
        "port.ecn": ("1", "packets received with an ECN congestion mark (counter)"),
        "port.drops": ("1", "packets dropped for want of receive buffers (counter)"),
        "port.retransmits": ("1", "transport retransmissions and their causes (counter)"),
        "interface.rx_bytes": ("By", "bytes received on a network interface (counter)"),
        "interface.tx_bytes": ("By", "bytes sent on a network interface (counter)"),
        "interface.speed": ("By/s", "a network interface's line rate"),
        "interface.up": ("1", "1 while a network interface is up"),
        "mount.read_bytes": ("By", "bytes read through a filesystem (counter)"),
        "mount.write_bytes": ("By", "bytes written through a filesystem (counter)"),
        "mount.read_ops": ("1", "read operations on a filesystem (counter)"),
        "mount.write_ops": ("1", "write operations on a filesystem (counter)"),
        "mount.ops": ("1", "all operations on a filesystem (counter)"),
        "mount.latency": ("s", "average time per operation over the interval"),
        "mount.rtt": ("s", "average network round trip per operation over the interval (NFS)"),
        "mount.retransmits": ("1", "retransmitted requests (counter, NFS)"),
        "mount.queue_depth": ("1", "average requests queued or in flight on the backing device"),
        "mount.busy": ("1", "share of time the backing device was busy"),
        "mount.job.read_bytes": ("By", "bytes the job's processes read with files there (counter)"),
        "mount.job.write_bytes": (
            "By",
            "bytes the job's processes wrote with files there (counter)",
        ),
        "mount.job.device_read_bytes": (
            "By",
            "bytes the job's processes had read from the mount's block device (counter)",
        ),
        "mount.job.device_write_bytes": (
            "By",
            "bytes the job's processes had written to the mount's block device (counter)",
        ),
        "disk.read_bytes": ("By", "bytes read from a block device (counter)"),
        "disk.write_bytes": ("By", "bytes written to a block device (counter)"),
        "disk.busy_time": ("s", "time a block device was busy (counter)"),
        # -- runtime latency distributions (TPU: libtpu's HLO timing and megascale.*)
        **_latency_roles(),
    }
)
