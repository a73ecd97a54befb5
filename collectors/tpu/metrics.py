"""TPU metrics (source ``tpu``), declared once; and how each libtpu runtime metric maps onto them.

Entities: ``tpu3`` (a chip, kind ``accelerator``), ``tpu3/core1`` (one device of a two-device
chip, kind ``accelerator.part``) and ``tpu`` (the host's TPU runtime: its state and the
multi-slice latency distributions, which libtpu reports per host).

Units are those OpenTelemetry expects: libtpu's percentages become ratios 0..1, microseconds
become seconds. No semantic convention covers TPUs yet, so everything exports as
``accelwatch.tpu.*``; the roles (agent/catalog/roles.py) let analysis, TUI and exporters treat
chips as accelerators.
"""

from __future__ import annotations

from agent.catalog import Metric, metric
from agent.catalog.roles import latency_role

SOURCE = "tpu"
RUNTIME_ENTITY = "tpu"


def _m(name: str, unit: str, kind: str, description: str, role: str | None = None) -> Metric:
    return metric(name, unit, kind, description, source=SOURCE, role=role)  # type: ignore[arg-type]


#: Distributions reported as percentiles + count: our metric stem → libtpu metric name.
DISTRIBUTIONS = {
    "tpu.hlo.execution": "hlo.execution.timing.distribution.microseconds",
    "tpu.dcn.transfer": "megascale.dcn_transfer_latencies.microsecond.cumulative.distribution",
    "tpu.dcn.inbound_transfer": (
        "megascale.dcn_inbound_transfer_latencies.microsecond.cumulative.distribution"
    ),
    "tpu.host_to_device.transfer": (
        "megascale.host_to_device_transfer_latencies.microsecond.cumulative.distribution"
    ),
    "tpu.device_to_host.transfer": (
        "megascale.device_to_host_transfer_latencies.microsecond.cumulative.distribution"
    ),
    "tpu.collective.latency": (
        "megascale.collective_end_to_end_latencies.microsecond.cumulative.distribution"
    ),
}
_DISTRIBUTION_TEXT = {
    "tpu.hlo.execution": "HLO program execution time",
    "tpu.dcn.transfer": "DCN (cross-slice) buffer transfer latency",
    "tpu.dcn.inbound_transfer": "inbound DCN buffer transfer latency",
    "tpu.host_to_device.transfer": "host → device transfer latency",
    "tpu.device_to_host.transfer": "device → host transfer latency",
    "tpu.collective.latency": "collective end-to-end latency",
}
PERCENTILES = (0.5, 0.9, 0.99)
#: Our distribution stem → the latency role stem it plays (agent/catalog/roles.py LATENCIES), so
#: rules and cards read transfer and collective latencies without naming this source.
_LATENCY_ROLE = {
    "tpu.hlo.execution": "exec",
    "tpu.dcn.transfer": "dcn",
    "tpu.host_to_device.transfer": "h2d",
    "tpu.device_to_host.transfer": "d2h",
    "tpu.collective.latency": "collective",
}

#: Gauges: libtpu metric name → (our metric, scale to our unit).
GAUGES = {
    "tpu.runtime.hbm.memory.usage.bytes": ("tpu.memory.used", 1.0),
    "tpu.runtime.hbm.memory.total.bytes": ("tpu.memory.total", 1.0),
    "tpu.runtime.tensorcore.dutycycle.percent": ("tpu.duty_cycle", 0.01),
    "tpu.runtime.hbm.utilization.percent": ("tpu.hbm.utilization", 0.01),
    "tpu.runtime.tensorcore.idle_duration.seconds": ("tpu.tensorcore.idle_duration", 1.0),
    "hlo.queue.size.gauge": ("tpu.hlo.queue.size", 1.0),
}

#: Every runtime metric the collector knows how to read.
RUNTIME_METRICS = frozenset(GAUGES) | frozenset(DISTRIBUTIONS.values())


def _distribution_metrics() -> list[Metric]:
    out = []
    for stem, text in _DISTRIBUTION_TEXT.items():
        role = _LATENCY_ROLE.get(stem)
        for q in PERCENTILES:
            p = f"p{round(q * 100)}"
            out.append(
                _m(
                    f"{stem}.{p}",
                    "s",
                    "gauge",
                    f"{text}, {q:.0%} quantile",
                    latency_role(role, p) if role else None,
                )
            )
        count_role = latency_role(role, "count") if role else None
        out.append(_m(f"{stem}.count", "1", "counter", f"{text}: operations measured", count_role))
    return out


METRICS: list[Metric] = [
    _m(
        "tpu.duty_cycle",
        "1",
        "gauge",
        "share of time the TensorCores executed a program (libtpu duty cycle)",
        "accelerator.busy",
    ),
    _m("tpu.memory.used", "By", "gauge", "HBM in use", "accelerator.memory.used"),
    _m("tpu.memory.total", "By", "gauge", "HBM size", "accelerator.memory.total"),
    _m(
        "tpu.hbm.utilization",
        "1",
        "gauge",
        "HBM bandwidth used, share of peak",
        "accelerator.memory.bandwidth",
    ),
    _m(
        "tpu.tensorcore.idle_duration",
        "s",
        "gauge",
        "time since the TensorCore last ran a program",
    ),
    _m("tpu.hlo.queue.size", "1", "gauge", "HLO programs queued", "accelerator.queue.size"),
    _m(
        "tpu.core.queued_programs",
        "1",
        "gauge",
        "programs queued on a core (GetTpuRuntimeStatus)",
    ),
    _m(
        "tpu.job.processes",
        "1",
        "gauge",
        "processes of the watched job holding the chip's device files",
        "accelerator.job.processes",
    ),
    _m("tpu.runtime.up", "1", "gauge", "1 while libtpu's metrics service answers, else 0"),
    *_distribution_metrics(),
]
