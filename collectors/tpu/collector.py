"""The TPU collector: chips from sysfs, the job's chips from its fds, metrics from libtpu.

Runtime metrics are per libtpu device (``int_attr`` = device id, or a ``device_ordinal`` key in
a kvlist attribute); devices map onto chips with the chip's devices-per-chip. A chip entity
(``tpu0``) carries the chip's totals (memory summed, duty cycle averaged over its devices); on
two-device chips each device is also recorded as a part (``tpu0/core1``). The duty cycle is
per chip on v2-v6e and per device on TPU7x: which it is follows from how many values come.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import CollectorUnavailable
from agent.model import Batch, BatchBuilder
from agent.source import CollectContext, Collector
from collectors.tpu import discovery, distribution
from collectors.tpu.metadata import DEFAULT_BASE_URL, NodeMetadata
from collectors.tpu.metadata import fetch as fetch_metadata
from collectors.tpu.metrics import (
    DISTRIBUTIONS,
    GAUGES,
    PERCENTILES,
    RUNTIME_ENTITY,
    RUNTIME_METRICS,
    SOURCE,
)

if TYPE_CHECKING:  # grpc and the protos load in start(), only on a machine with TPU work
    from collectors.tpu.runtime import RuntimeClient, Scrape

#: Seconds all runtime calls of one tick may take together (the runtime client reads it too).
DEFAULT_DEADLINE_S = 0.2

#: Environment fallbacks, read when the command line (``CollectContext``) does not say: how the
#: simulator points a recording at its fake tree. ``--sys-root``/``--proc-root`` and
#: ``--tpu-runtime`` win over them.
ENV_SYS_ROOT = "ACCELWATCH_TPU_SYS_ROOT"
ENV_DEV_ROOT = "ACCELWATCH_TPU_DEV_ROOT"
ENV_PROC_ROOT = "ACCELWATCH_TPU_PROC_ROOT"
ENV_RUNTIME = "ACCELWATCH_TPU_RUNTIME"
ENV_METADATA = "ACCELWATCH_TPU_METADATA_URL"
OWNERSHIP_EVERY_S = 5.0
_STEM_OF = {v: k for k, v in DISTRIBUTIONS.items()}
_MEAN = {"tpu.duty_cycle", "tpu.hbm.utilization", "tpu.tensorcore.idle_duration"}


def device_id_of(sample: Any) -> int | None:
    """libtpu's device id of one metric sample: an int attribute or a ``device_ordinal`` key."""
    value = sample.attribute.value
    which = value.WhichOneof("attr")
    if which == "int_attr":
        return int(value.int_attr)
    if which == "kvlist_attr":
        for attr in value.kvlist_attr.attributes:
            if attr.key in ("device_ordinal", "device_id"):
                v = attr.value
                kind = v.WhichOneof("attr")
                if kind == "int_attr":
                    return int(v.int_attr)
                if kind == "string_attr" and v.string_attr.isdigit():
                    return int(v.string_attr)
    return None


def gauge_value(sample: Any) -> float | None:
    if sample.WhichOneof("measure") != "gauge":
        return None
    g = sample.gauge
    kind = g.WhichOneof("value")
    if kind == "as_double":
        return float(g.as_double)
    if kind == "as_int":
        return float(g.as_int)
    if kind == "as_bool":
        return float(g.as_bool)
    return None


_BOUNDS_CACHE: dict[tuple[bytes, int], tuple[float, ...] | None] = {}


def buckets_of(sample: Any) -> distribution.Buckets | None:
    if sample.WhichOneof("measure") != "distribution":
        return None
    d = sample.distribution
    counts = tuple(d.bucket_counts)
    key = (d.bucket_options.SerializeToString(), len(counts))
    try:
        bounds = _BOUNDS_CACHE[key]
    except KeyError:  # every scrape repeats the same few bucket layouts
        if len(_BOUNDS_CACHE) > 256:
            _BOUNDS_CACHE.clear()
        bounds = _BOUNDS_CACHE[key] = distribution.bounds_of(d.bucket_options, len(counts))
    if bounds is None or len(counts) != len(bounds) + 1:
        return None
    return distribution.Buckets(bounds, counts)


class TpuCollector(Collector):
    """``start`` finds chips (or a configured runtime); ``collect`` never waits past a deadline."""

    source = SOURCE

    def __init__(
        self,
        *,
        sys_root: str | None = None,
        dev_root: str | None = None,
        proc_root: str | None = None,
        runtime: str | None = None,
        deadline: float = DEFAULT_DEADLINE_S,
        metadata: Callable[[], NodeMetadata] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        env = dict(os.environ if env is None else env)
        self._given = {"sys": sys_root, "dev": dev_root, "proc": proc_root, "runtime": runtime}
        self.sys_root = sys_root or env.get(ENV_SYS_ROOT) or "/sys"
        self.dev_root = dev_root or env.get(ENV_DEV_ROOT) or "/dev"
        self.proc_root = proc_root or env.get(ENV_PROC_ROOT) or "/proc"
        self._runtime_spec = runtime or env.get(ENV_RUNTIME)
        self._env = env
        self.deadline = deadline
        url = env.get(ENV_METADATA, DEFAULT_BASE_URL)
        if metadata is None and url.lower() not in ("", "off", "none"):
            metadata = lambda: fetch_metadata(url)  # noqa: E731
        self._metadata = metadata
        self.chips: list[discovery.TpuChip] = []
        self.client: RuntimeClient | None = None
        self._ctx = CollectContext()
        self._described = False
        self._notices: list[tuple[str, str, dict[str, Any]]] = []
        self._noticed: set[str] = set()
        self._previous: dict[tuple[str, str], distribution.Buckets] = {}
        self.node: dict[str, Any] = {}
        self._owners: dict[int, int] = {}
        self._owner_pids: frozenset[int] | None = None
        self._owners_at = 0.0

    # -- lifecycle
    def _resolve(self, ctx: CollectContext) -> None:
        """Roots and runtime: constructor arguments, then the command line (the context's
        roots when not the defaults, ``options["tpu"]["runtime"]``), then the environment."""
        env = self._env
        if not self._given["sys"] and ctx.sys_root != "/sys":
            self.sys_root = ctx.sys_root
            beside = Path(ctx.sys_root).parent / "dev"  # a captured tree: sys/ dev/ proc/
            if not self._given["dev"] and ENV_DEV_ROOT not in env and beside.is_dir():
                self.dev_root = str(beside)
        if not self._given["proc"] and ctx.proc_root != "/proc":
            self.proc_root = ctx.proc_root
        option = (ctx.options.get(SOURCE) or {}).get("runtime")
        self._runtime_spec = self._given["runtime"] or option or env.get(ENV_RUNTIME)

    def start(self, ctx: CollectContext) -> None:
        self._ctx = ctx
        self._resolve(ctx)
        self.chips = discovery.discover(self.sys_root, self.dev_root)
        explicit = bool(self._runtime_spec or self._env.get("TPU_RUNTIME_METRICS_PORTS"))
        if not self.chips and not explicit:
            raise CollectorUnavailable(
                f"no TPU chips under {Path(self.sys_root) / 'bus/pci/devices'} "
                "and no TPU runtime configured"
            )
        from collectors.tpu.runtime import RuntimeClient
        from collectors.tpu.targets import TargetSpecError, parse_targets

        try:
            targets = parse_targets(self._runtime_spec, self._env)
        except TargetSpecError as exc:
            raise CollectorUnavailable(f"TPU runtime address: {exc}") from None
        self.client = RuntimeClient(
            targets,
            wanted=RUNTIME_METRICS,
            deadline=self.deadline,
        )
        if self._metadata is not None and self.chips:  # only a TPU VM asks its metadata server
            node = self._metadata()
            if node.notice:
                self._notices.append(
                    ("tpu_metadata_unavailable", RUNTIME_ENTITY, {"reason": node.notice})
                )
            self.node = node.attributes()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    # -- one tick
    def collect(self, now: float) -> Batch:
        b = BatchBuilder(SOURCE, now)
        if not self._described:
            self._describe(b)
        for kind, entity, detail in self._notices:
            b.event(kind, entity, **detail)
        self._notices.clear()
        if self.client is None:
            self._ownership(b, now)
            return b.build()
        scrapes, transitions = self.client.scrape(now)
        self._ownership(b, now)
        for t in transitions:
            kind = "tpu_runtime_up" if t.up else "tpu_runtime_down"
            detail: dict[str, Any] = {"target": t.target, "reason": t.reason}
            if not t.up:
                detail["severity"] = "info" if "not up" in t.reason else "warning"
            b.event(kind, RUNTIME_ENTITY, **detail)
            if t.up:
                unknown = sorted(n for n in t.offered if n not in RUNTIME_METRICS)
                if unknown:
                    self._notice_once(
                        b, "unknown", "tpu_metric_skipped", metrics=unknown, reason="unknown"
                    )
        up = any(ep.up for ep in self.client.endpoints)
        b.add(RUNTIME_ENTITY, "tpu.runtime.up", 1.0 if up else 0.0)
        for scrape in scrapes:
            self._record(b, scrape)
        return b.build()

    def _describe(self, b: BatchBuilder) -> None:
        self._described = True
        for chip in self.chips:
            b.describe(
                chip.entity,
                name=f"TPU {chip.type.name}",
                chip_type=chip.type.name,
                pci_address=chip.pci_slot,
                hbm_bytes=chip.type.hbm_bytes,
                devices=[d.index for d in chip.devices],
                device_files=sorted({d.dev_path for d in chip.devices}),
                **{k: v for k, v in self.node.items() if isinstance(v, str | int)},
            )
            if len(chip.devices) > 1:
                for d in chip.devices:
                    b.describe(
                        discovery.device_entity(chip, d),
                        name=f"TPU {chip.type.name} core {d.core}",
                        chip=chip.entity,
                        device_id=d.index,
                        pci_address=d.pci_address,
                    )
        if self.node:
            b.describe(RUNTIME_ENTITY, **self.node)

    def _ownership(self, b: BatchBuilder, now: float) -> None:
        """Processes of the job per chip, from their fd links.

        Holding a chip changes rarely (libtpu opens it once), and reading every fd link of every
        job process each tick would be most of this source's cost: once the job holds every
        chip, the links are read again only when its pids change or after 5 s.
        """
        if not self.chips:
            return
        pids = self._ctx.job_pids()
        settled = (
            pids == self._owner_pids
            and self._owners
            and all(self._owners.values())
            and 0 <= now - self._owners_at < OWNERSHIP_EVERY_S
        )
        if not settled:
            held = discovery.chips_held(self.chips, pids, self.proc_root) if pids else {}
            self._owners = {c.index: len(held.get(c.index, ())) for c in self.chips}
            self._owner_pids, self._owners_at = pids, now
        for chip in self.chips:
            b.add(chip.entity, "tpu.job.processes", self._owners[chip.index])

    def _notice_once(self, b: BatchBuilder, key: str, kind: str, **detail: Any) -> None:
        if key in self._noticed:
            return
        self._noticed.add(key)
        b.event(kind, RUNTIME_ENTITY, **detail)

    # -- mapping runtime values onto entities
    def _device_map(self) -> tuple[dict[int, str], dict[int, str]]:
        """Device id → part entity (two-device chips) and → chip entity."""
        parts: dict[int, str] = {}
        chip_of: dict[int, str] = {}
        for chip in self.chips:
            for d in chip.devices:
                chip_of[d.index] = chip.entity
                if len(chip.devices) > 1:
                    parts[d.index] = discovery.device_entity(chip, d)
        return parts, chip_of

    def _record(self, b: BatchBuilder, scrape: Scrape) -> None:
        parts, chip_of = self._device_map()
        for name, tpu_metric in scrape.responses.items():
            if name in GAUGES:
                self._gauge(b, name, tpu_metric, parts, chip_of)
            elif name in _STEM_OF:
                self._distribution(b, scrape.target, name, tpu_metric, parts, chip_of)
        for name, code in scrape.failed.items():
            self._notice_once(
                b,
                f"{name}:{code}",
                "tpu_metric_failed",
                metric=name,
                code=code,
                target=scrape.target,
            )
        if scrape.status is not None:
            self._status(b, scrape.status, parts, chip_of)

    def _gauge(self, b, name, tpu_metric, parts, chip_of) -> None:
        ours, scale = GAUGES[name]
        values: dict[int, float] = {}
        for sample in tpu_metric.metrics:
            attr = sample.attribute.value
            if attr.WhichOneof("attr") == "int_attr" and sample.WhichOneof("measure") == "gauge":
                g = sample.gauge  # the common shape, read without the general helpers
                kind = g.WhichOneof("value")
                if kind == "as_double":
                    values[attr.int_attr] = g.as_double * scale
                    continue
                if kind == "as_int":
                    values[attr.int_attr] = g.as_int * scale
                    continue
            dev, value = device_id_of(sample), gauge_value(sample)
            if dev is None or value is None:
                self._notice_once(
                    b,
                    f"malformed:{name}",
                    "tpu_metric_skipped",
                    metric=name,
                    reason="malformed sample",
                )
                continue
            values[dev] = value * scale
        if not values:
            return
        per_chip_values = (
            ours == "tpu.duty_cycle"
            and self.chips
            and len(values) == len(self.chips)
            and len(values) < len(chip_of)
        )
        if per_chip_values:  # one value per chip: every device of the chip has it
            for chip in self.chips:
                v = values.get(chip.index)
                b.add(chip.entity, ours, v)
                for d in chip.devices if len(chip.devices) > 1 else ():
                    b.add(parts[d.index], ours, v)
            return
        per_chip: dict[str, list[float]] = {}
        for dev, v in sorted(values.items()):
            chip = chip_of.get(dev, f"tpu{dev}")
            per_chip.setdefault(chip, []).append(v)
            if dev in parts:
                b.add(parts[dev], ours, v)
        for chip, vs in per_chip.items():
            b.add(chip, ours, sum(vs) / len(vs) if ours in _MEAN else sum(vs))

    def _distribution(self, b, target, name, tpu_metric, parts, chip_of) -> None:
        stem = _STEM_OF[name]
        cumulative = ".cumulative." in name
        groups: dict[str, distribution.Buckets] = {}
        for sample in tpu_metric.metrics:
            buckets = buckets_of(sample)
            if buckets is None:
                self._notice_once(
                    b,
                    f"malformed:{name}",
                    "tpu_metric_skipped",
                    metric=name,
                    reason="malformed distribution",
                )
                continue
            dev = device_id_of(sample) if not cumulative else None
            chip = chip_of.get(dev, f"tpu{dev}") if dev is not None else RUNTIME_ENTITY
            # a two-device chip's parts have their own; the chip has both devices' together
            for entity in (chip, parts[dev]) if dev is not None and dev in parts else (chip,):
                have = groups.get(entity)
                if have is None:
                    groups[entity] = buckets
                elif have.bounds == buckets.bounds:
                    groups[entity] = distribution.Buckets(
                        have.bounds, tuple(x + y for x, y in zip(have.counts, buckets.counts))
                    )
        for entity, buckets in groups.items():
            b.add(entity, f"{stem}.count", buckets.total)
            window = buckets
            if cumulative:
                key = (target + entity, name)
                earlier = self._previous.get(key)
                self._previous[key] = buckets
                if earlier is not None:
                    window = buckets.minus(earlier) or buckets
            for q, v in zip(PERCENTILES, distribution.quantiles(window, PERCENTILES)):
                # libtpu reports microseconds
                b.add(entity, f"{stem}.p{round(q * 100)}", None if v is None else v * 1e-6)

    def _status(self, b, status, parts, chip_of) -> None:
        for core_id, summary in status.core_states.items():
            dev = int(core_id)
            entity = parts.get(dev) or chip_of.get(dev, f"tpu{dev}")
            b.add(entity, "tpu.core.queued_programs", len(summary.queued_program_info))
            if summary.HasField("error_message") and summary.error_message:
                self._notice_once(
                    b,
                    f"core-error:{dev}:{summary.error_message}",
                    "tpu_core_error",
                    core=dev,
                    message=summary.error_message,
                    severity="warning",
                )


def build(**kwargs: Any) -> TpuCollector:
    """The registry's factory."""
    return TpuCollector(**kwargs)
