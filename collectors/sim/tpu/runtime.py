"""What a simulated libtpu answers at scenario time ``t``: the protobuf responses, built here.

Kept apart from the gRPC plumbing (server.py) so tests can read exactly what was sent:
``sent[(runtime metric, device or chip id)]`` holds the raw value (percent, bytes,
microseconds) of the last answer, and ``sent_counts`` the distributions' counts.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from tpu_info.proto import tpu_metric_service_pb2 as pb
from tpu_info.proto import tpu_telemetry_pb2 as telemetry

from collectors.sim.tpu.scenario import TpuScenario

HBM_USAGE = "tpu.runtime.hbm.memory.usage.bytes"
HBM_TOTAL = "tpu.runtime.hbm.memory.total.bytes"
DUTY_CYCLE = "tpu.runtime.tensorcore.dutycycle.percent"
HBM_UTIL = "tpu.runtime.hbm.utilization.percent"
IDLE = "tpu.runtime.tensorcore.idle_duration.seconds"
QUEUE = "hlo.queue.size.gauge"
HLO_TIMING = "hlo.execution.timing.distribution.microseconds"
_MS = "megascale.{}.microsecond.cumulative.distribution"
#: megascale distribution → the signal giving its median latency (µs)
MEGASCALE = {
    _MS.format("dcn_transfer_latencies"): "dcn_latency_us",
    _MS.format("dcn_inbound_transfer_latencies"): "dcn_latency_us",
    _MS.format("host_to_device_transfer_latencies"): "h2d_latency_us",
    _MS.format("device_to_host_transfer_latencies"): "d2h_latency_us",
    _MS.format("collective_end_to_end_latencies"): "collective_latency_us",
}
BASE = (HBM_USAGE, HBM_TOTAL, DUTY_CYCLE, HBM_UTIL, IDLE, QUEUE, HLO_TIMING)
#: Exponential buckets as libtpu uses for latencies: 1 µs × 2^i.
SCALE_US, GROWTH, FINITE = 1.0, 2.0, 32
BOUNDS = tuple(SCALE_US * GROWTH**i for i in range(FINITE + 1))
SIGMA = 0.35  # spread of simulated latencies (log-normal)
WINDOW = 100  # observations in a non-cumulative distribution


def lognormal_counts(median: float, n: float) -> list[float]:
    """Expected bucket counts (underflow, finite..., overflow) of ``n`` log-normal samples."""

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(math.log(x / median) / (SIGMA * math.sqrt(2))))

    cum = [0.0] + [cdf(b) for b in BOUNDS] + [1.0]
    return [n * (cum[i + 1] - cum[i]) for i in range(len(BOUNDS) + 1)]


def _int_attr(i: int) -> pb.Attribute:
    return pb.Attribute(key="device-id", value=pb.AttrValue(int_attr=i))


def _kv(**items: str) -> pb.Attribute:
    attrs = [pb.Attribute(key=k, value=pb.AttrValue(string_attr=v)) for k, v in items.items()]
    return pb.Attribute(
        key="labels", value=pb.AttrValue(kvlist_attr=pb.KeyValueList(attributes=attrs))
    )


def _distribution(counts: list[int]) -> pb.Distribution:
    total = sum(counts)
    opts = pb.Distribution.BucketOptions(
        exponential_buckets=pb.Distribution.BucketOptions.Exponential(
            num_finite_buckets=FINITE, growth_factor=GROWTH, scale=SCALE_US
        )
    )
    return pb.Distribution(count=total, bucket_options=opts, bucket_counts=counts)


class SimulatedRuntime:
    """The metrics a libtpu running ``scenario`` reports, on a clock tests may drive."""

    def __init__(self, scenario: TpuScenario, clock: Callable[[], float], start: float) -> None:
        self.scenario = scenario
        self.clock = clock
        self.start = start
        self.sent: dict[tuple[str, int], float] = {}
        self.sent_counts: dict[str, int] = {}
        self._cum: dict[str, list[float]] = {}
        self._cum_t: dict[str, float] = {}
        self._lock = threading.Lock()

    def t(self) -> float:
        return self.clock() - self.start

    def up(self) -> bool:
        return self.scenario.runtime_up(self.t())

    def offered(self) -> list[str]:
        s = self.scenario
        names = [n for n in BASE if n not in s.unsupported]
        levels = s.levels(0, 0.0)
        names += [n for n, sig in MEGASCALE.items() if levels[sig] > 0 and n not in s.unsupported]
        return names

    def chip_levels(self) -> list[dict[str, float]]:
        t = self.t()
        return [self.scenario.levels(c, t) for c in range(self.scenario.chips)]

    def metric(self, name: str) -> pb.TPUMetric:
        """The ``TPUMetric`` answer to ``GetRuntimeMetric(name)`` now."""
        s = self.scenario
        dpc = s.chip.devices_per_chip
        levels = self.chip_levels()
        out = pb.TPUMetric(name=name, description=f"simulated {name}")
        with self._lock:
            if name in MEGASCALE:
                self._megascale(out, name, levels)
                return out
            per_device_duty = dpc > 1 and s.chip.name == "7x"
            for chip, lv in enumerate(levels):
                if name == DUTY_CYCLE and not per_device_duty:
                    self._gauge(out, name, chip, as_double=round(lv["duty_cycle"] * 100, 3))
                    continue
                for core in range(dpc):
                    dev = chip * dpc + core
                    self._device(out, name, dev, lv, dpc)
        return out

    def _gauge(self, out: pb.TPUMetric, name: str, ident: int, **value: float | int) -> None:
        out.metrics.add(attribute=_int_attr(ident), gauge=pb.Gauge(**value))
        self.sent[(name, ident)] = float(next(iter(value.values())))

    def _device(self, out: pb.TPUMetric, name: str, dev: int, lv: dict[str, float], dpc: int):
        total = self.scenario.chip.hbm_bytes // dpc
        if name == HBM_USAGE:
            self._gauge(out, name, dev, as_int=int(lv["hbm_used_gib"] * (1 << 30) / dpc))
        elif name == HBM_TOTAL:
            self._gauge(out, name, dev, as_int=total)
        elif name == DUTY_CYCLE:
            self._gauge(out, name, dev, as_double=round(lv["duty_cycle"] * 100, 3))
        elif name == HBM_UTIL:
            self._gauge(out, name, dev, as_double=round(lv["hbm_utilization"] * 100, 3))
        elif name == IDLE:
            self._gauge(out, name, dev, as_double=lv["idle_s"])
        elif name == QUEUE:
            q = int(round(lv["queue_size"]))
            attr = _kv(device_ordinal=str(dev), core_type="TPU_CORE_TYPE_TENSOR_CORE")
            out.metrics.add(attribute=attr, gauge=pb.Gauge(as_int=q))
            self.sent[(name, dev)] = float(q)
        elif name == HLO_TIMING and lv["hlo_exec_us"] > 0:
            counts = [int(round(c)) for c in lognormal_counts(lv["hlo_exec_us"], WINDOW)]
            attr = _kv(device_ordinal=str(dev), core_type="TPU_CORE_TYPE_TENSOR_CORE")
            out.metrics.add(attribute=attr, distribution=_distribution(counts))
            self.sent[(name, dev)] = lv["hlo_exec_us"]
            self.sent_counts[f"{name}/{dev}"] = sum(counts)

    def _megascale(self, out: pb.TPUMetric, name: str, levels: list[dict[str, float]]) -> None:
        t = self.t()
        lv = levels[0]
        median = lv[MEGASCALE[name]]
        cum = self._cum.setdefault(name, [0.0] * (len(BOUNDS) + 1))
        last = self._cum_t.get(name, max(0.0, t - 1.0))
        if median > 0 and t > last:
            for i, c in enumerate(lognormal_counts(median, lv["transfers_per_s"] * (t - last))):
                cum[i] += c
        self._cum_t[name] = t
        counts = [int(c) for c in cum]
        attr = _kv(**{"buffer-size": "1MiB"})
        out.metrics.add(attribute=attr, distribution=_distribution(counts))
        self.sent[(name, 0)] = median
        self.sent_counts[name] = sum(counts)

    def status(self) -> pb.GetTpuRuntimeStatusResponse:
        s = self.scenario
        dpc = s.chip.devices_per_chip
        resp = pb.GetTpuRuntimeStatusResponse(host_name="sim-tpu-vm")
        for chip, lv in enumerate(self.chip_levels()):
            for core in range(dpc):
                dev = chip * dpc + core
                summary = resp.core_states[dev]
                summary.core_id.global_core_id = dev
                summary.core_id.chip_id = chip
                summary.core_id.core_on_chip.index = core
                summary.core_id.core_on_chip.type = telemetry.TPU_CORE_TYPE_TENSOR_CORE
                for i in range(int(round(lv["queue_size"]))):
                    summary.queued_program_info.add(run_id=1, launch_id=i)
                self.sent[("status.queued", dev)] = float(int(round(lv["queue_size"])))
        return resp
