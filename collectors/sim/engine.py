"""Turns a scenario into device state at simulated time t, with real semantics.

Time advances in ticks of TICK_S. Every signal is a pure function of
(seed, gpu, tick), evaluated with numpy for a whole range of ticks at once,
so any window can be recomputed and the state at t never depends on how
often it was read. On top of that the engine keeps running integrals:

* utilization is the mean of `busy` over the model's sample period,
* energy (mJ) is the integral of the same per-tick power the driver reports,
* PCIe / NVLink byte counters integrate their rates and only grow (until a
  scenario's counter_reset, or a 64-bit wrap when [counters] offset is set),
* GPM samples carry the activity integrals, so metrics between two samples
  are exact averages over that interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pynvml

from collectors.sim.scenario import SIGNALS, Effect, Scenario

TICK_S = 0.02  # 50 Hz, the rate at which boards refresh instantaneous power
_NOISE_TICKS = 5  # noise holds for 100 ms so that windowed means still move
_CHUNK_TICKS = 10000
_PROC_SAMPLES_KEPT = 10
_U64 = 1 << 64
_SI = {name: i for i, name in enumerate(SIGNALS)}
_NOISY = np.array(
    [
        _SI[s]
        for s in (
            "busy",
            "sm_activity",
            "sm_occupancy",
            "tensor_activity",
            "dram_activity",
            "fp16_activity",
            "fp32_activity",
            "fp64_activity",
            "nvlink_tx_gbps",
            "nvlink_rx_gbps",
            "pcie_tx_gbps",
            "pcie_rx_gbps",
        )
    ]
)
_FRACTIONS = np.array(
    [
        _SI[s]
        for s in (
            "busy",
            "sm_activity",
            "sm_occupancy",
            "tensor_activity",
            "dram_activity",
            "fp16_activity",
            "fp32_activity",
            "fp64_activity",
        )
    ]
)
# Columns of the cumulative integral matrix (per GPU). Activities in
# fraction-seconds, traffic in bytes, energy in joules.
CUM = (
    "busy",
    "sm",
    "occupancy",
    "tensor",
    "dram",
    "fp16",
    "fp32",
    "fp64",
    "pcie_tx",
    "pcie_rx",
    "nvlink_tx",
    "nvlink_rx",
    "energy",
)
CI = {name: i for i, name in enumerate(CUM)}
_COUNTER_COLS = [CI["pcie_tx"], CI["pcie_rx"], CI["nvlink_tx"], CI["nvlink_rx"], CI["energy"]]
_IDLE_BUSY = 0.02
_DBE_XIDS = frozenset({48, 94, 95})
_SBE_XIDS = frozenset({63, 92})
LOST_XID = 79


def _hash_unit(keys: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 keys mapped to uniform floats in [-1, 1)."""
    x = keys + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (2.0 / (1 << 53)) - 1.0


@dataclass(slots=True)
class Signals:
    """Per-tick device signals for a tick range; arrays shaped (gpus, ticks)."""

    busy: np.ndarray
    act: np.ndarray  # (8, G, T): sm, occupancy, tensor, dram, fp16, fp32, fp64 ... effective
    traffic: np.ndarray  # (4, G, T) bytes/s: pcie tx, rx, nvlink tx, rx
    memory_used: np.ndarray  # bytes
    temp_level: np.ndarray
    power_w: np.ndarray
    clock_factor: np.ndarray
    reasons: np.ndarray  # int64 bit set


@dataclass(slots=True)
class GpuFrame:
    """Everything the driver reports for one GPU at one tick (plain Python values)."""

    lost: bool
    timestamp_us: int
    util_gpu: int
    util_memory: int
    power_avg_mw: int
    power_inst_mw: int
    power_limit_mw: int
    energy_mj: int
    temperature_c: int
    memory_temp_c: int
    fan_pct: int
    sm_clock_mhz: int
    mem_clock_mhz: int
    video_clock_mhz: int
    reasons: int
    pstate: int
    memory_used: int  # excludes the driver reservation (nvmlMemory_v2 semantics)
    pcie_tx_bytes: int
    pcie_rx_bytes: int
    pcie_tx_kbps: int  # KB/s over the last 20 ms tick, as nvmlDeviceGetPcieThroughput reports
    pcie_rx_kbps: int
    nvlink_tx_bytes: list[int]  # per link, as the 64-bit counters read
    nvlink_rx_bytes: list[int]
    sbe_volatile: int
    dbe_volatile: int
    remapped_cor: int
    remapped_unc: int
    remap_pending: int
    pcie_replays: int
    remap_failure: int = 0
    field_cache: dict[bytes, bytes] = field(default_factory=dict)  # field-value requests answered


class Engine:
    """Deterministic state of every simulated GPU as a function of the tick."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.model = m = scenario.hardware.model
        self.gpus = g = scenario.gpu_count
        self.util_window = max(1, round(m.util_period_s / TICK_S))
        self._base = np.array(
            [[scenario.levels(i)[s] for i in range(g)] for s in SIGNALS]
        )  # (S, G)
        self._windows = [(e, self._mask(e)) for e in scenario.effects if not e.is_point]
        self._points = [(e, self._mask(e)) for e in scenario.effects if e.is_point]
        self.lost_tick = [math.inf] * g
        for e, mask in self._points:
            if e.lost:
                for i in np.flatnonzero(mask):
                    self.lost_tick[i] = min(self.lost_tick[i], self.tick_of(e.at_s or 0.0))
        rng = np.random.default_rng(scenario.seed)
        self._noise_keys = rng.integers(0, 1 << 62, size=(len(_NOISY), g), dtype=np.uint64)
        links = m.nvlink_links
        weights = 1.0 + 0.04 * rng.random((g, links)) if links else np.zeros((g, 0))
        self.link_weights = weights / weights.sum(axis=1, keepdims=True) if links else weights
        self._cum = np.zeros((g, len(CUM)))
        self._reset_base = np.zeros((g, len(CUM)))
        self._frontier = 0
        self._frame_tick = -1
        self._frames: list[GpuFrame] = []
        self._frame_cum = self._cum.copy()
        self._proc_tick = -1
        self._proc_samples: list[list[tuple[int, int, int]]] = []
        self._proc_known: dict[int, list[tuple[int, int]]] = {}  # sample tick -> per GPU (sm, mem)
        self.epoch_us = 0  # microseconds of wall time at tick 0, set by the driver

    # -- time -----------------------------------------------------------------------------------
    @staticmethod
    def tick_of(seconds: float) -> int:
        """The first tick at which something happening at `seconds` is visible."""
        return int(seconds / TICK_S + 1e-9) + 1

    def _mask(self, effect: Effect) -> np.ndarray:
        mask = np.zeros(self.gpus, dtype=bool)
        mask[list(effect.gpus) if effect.gpus is not None else slice(None)] = True
        return mask

    # -- signals --------------------------------------------------------------------------------
    def evaluate(self, start: int, stop: int) -> Signals:
        """Signals for ticks [start, stop)."""
        m = self.model
        ticks = np.arange(start, stop, dtype=np.int64)
        t = ticks * TICK_S
        vals = np.repeat(self._base[:, :, None], len(ticks), axis=2)
        reasons = np.zeros((self.gpus, len(ticks)), dtype=np.int64)
        for effect, gpu_mask in self._windows:
            active = (t >= effect.start_s) & (t < effect.end_s)
            window_start = np.full_like(t, effect.start_s)
            if effect.every_s:
                phase = np.mod(t - effect.start_s, effect.every_s)
                active &= phase < (effect.for_s or 0.0)
                window_start = t - phase
            if not active.any():
                continue
            sel = gpu_mask[:, None] & active[None, :]
            for name, value in effect.set.items():
                vals[_SI[name]][sel] = value
            for name, value in effect.scale.items():
                vals[_SI[name]][sel] *= value
            for name, rate in effect.ramp.items():
                vals[_SI[name]] += np.where(sel, rate * (t - window_start)[None, :], 0.0)
            if effect.throttle:
                reasons[sel] |= effect.throttle
        buckets = (ticks // _NOISE_TICKS).astype(np.uint64) * np.uint64(0x100000001B3)
        u = _hash_unit(self._noise_keys[:, :, None] + buckets[None, None, :])
        vals[_NOISY] *= 1.0 + vals[_SI["noise"]][None] * u
        vals[_FRACTIONS] = np.clip(vals[_FRACTIONS], 0.0, 1.0)
        busy = vals[_SI["busy"]]
        act = vals[_SI["sm_activity"] : _SI["fp64_activity"] + 1] * busy[None]
        traffic = np.empty((4, self.gpus, len(ticks)))
        traffic[0] = np.clip(vals[_SI["pcie_tx_gbps"]], 0.0, m.pcie_max_gbps) * 1e9
        traffic[1] = np.clip(vals[_SI["pcie_rx_gbps"]], 0.0, m.pcie_max_gbps) * 1e9
        nvl_max = m.nvlink_links * m.nvlink_link_gbps
        traffic[2] = np.clip(vals[_SI["nvlink_tx_gbps"]] * busy, 0.0, nvl_max) * 1e9
        traffic[3] = np.clip(vals[_SI["nvlink_rx_gbps"]] * busy, 0.0, nvl_max) * 1e9
        mem_cap = m.memory_total_bytes - m.memory_reserved_bytes
        memory = np.clip(vals[_SI["memory_used_gib"]] * (1 << 30), 0.0, mem_cap)

        # Power follows activity and the clock; a binding cap lowers the clock.
        load = 0.25 * busy + 0.40 * act[0] + 0.20 * act[2] + 0.15 * act[3]
        clock = np.clip(vals[_SI["clock_factor"]], 0.1, 1.0)
        idle_w, span_w = m.power_idle_w, m.power_limit_w - m.power_idle_w
        power = idle_w + span_w * load * clock**1.5
        requested = vals[_SI["power_limit_w"]]
        limit = np.where(
            requested > 0, np.clip(requested, m.power_min_w, m.power_limit_w), m.power_limit_w
        )
        target = limit * 0.985
        capped = power > target
        if capped.any():
            ratio = np.clip((target - idle_w) / np.maximum(power - idle_w, 1e-9), 0.0, 1.0)
            clock = np.where(capped, clock * ratio ** (2.0 / 3.0), clock)
            power = np.where(capped, target + limit * 0.01 * u[0], power)
            reasons |= np.where(capped, pynvml.nvmlClocksEventReasonSwPowerCap, 0)
        reasons |= np.where(busy < _IDLE_BUSY, pynvml.nvmlClocksEventReasonGpuIdle, 0)
        return Signals(
            busy,
            act,
            traffic,
            memory,
            vals[_SI["temperature_c"]],
            power,
            np.where(busy < _IDLE_BUSY, -1.0, clock),
            reasons,
        )

    def power_limit_w(self, tick: int) -> np.ndarray:
        """Enforced power limit per GPU at `tick` (a scenario may lower it)."""
        sig = self._base[_SI["power_limit_w"]].copy()
        t = (tick - 1) * TICK_S
        for effect, gpu_mask in self._windows:
            if (
                "power_limit_w" in effect.set
                and effect.start_s <= t < effect.end_s
                and (
                    not effect.every_s
                    or (t - effect.start_s) % effect.every_s < (effect.for_s or 0.0)
                )
            ):
                sig[gpu_mask] = effect.set["power_limit_w"]
        m = self.model
        return np.where(sig > 0, np.clip(sig, m.power_min_w, m.power_limit_w), m.power_limit_w)

    # -- integrals ------------------------------------------------------------------------------
    def _integrate(self, start: int, stop: int) -> None:
        self._accumulate(self.evaluate(start, stop), slice(None))

    def _accumulate(self, s: Signals, part: slice) -> None:
        self._cum[:, 0] += s.busy[:, part].sum(axis=1) * TICK_S
        self._cum[:, 1:8] += s.act[:, :, part].sum(axis=2).T * TICK_S
        self._cum[:, 8:12] += s.traffic[:, :, part].sum(axis=2).T * TICK_S
        self._cum[:, 12] += s.power_w[:, part].sum(axis=1) * TICK_S

    def cumulative(self, tick: int) -> np.ndarray:
        """Integrals over ticks [0, tick); (gpus, len(CUM)). Advances monotonically."""
        if tick > self._frontier:
            for reset_tick, gpu_mask in self._resets(self._frontier, tick):
                self._advance(reset_tick)
                self._reset_base[np.ix_(gpu_mask, _COUNTER_COLS)] = self._cum[
                    np.ix_(gpu_mask, _COUNTER_COLS)
                ]
            self._advance(tick)
        return self._cum

    def _advance(self, tick: int) -> None:
        while self._frontier < tick:
            stop = min(tick, self._frontier + _CHUNK_TICKS)
            self._integrate(self._frontier, stop)
            self._frontier = stop

    def _resets(self, after: int, upto: int) -> list[tuple[int, np.ndarray]]:
        out = []
        for effect, gpu_mask in self._points:
            if not effect.counter_reset:
                continue
            for when in self._occurrence_ticks(effect, after, upto):
                out.append((when, gpu_mask))
        return sorted(out, key=lambda item: item[0])

    def _occurrence_ticks(self, effect: Effect, after: int, upto: int) -> list[int]:
        """Ticks in (after, upto] at which a point effect becomes visible."""
        at = effect.at_s or 0.0
        if not effect.every_s:
            tick = self.tick_of(at)
            return [tick] if after < tick <= upto else []
        first = max(0, math.ceil(((after - 1) * TICK_S - at) / effect.every_s) - 1)
        out = []
        n = first
        while True:
            tick = self.tick_of(at + n * effect.every_s)
            if tick > upto:
                return out
            if tick > after:
                out.append(tick)
            n += 1

    def events(self, after: int, upto: int) -> list[tuple[int, int, int]]:
        """XID events (tick, gpu, xid) visible in ticks (after, upto], in time order."""
        out = []
        for effect, gpu_mask in self._points:
            xid = LOST_XID if effect.lost else effect.xid
            if xid is None:
                continue
            gpus = np.flatnonzero(gpu_mask).tolist()
            for tick in self._occurrence_ticks(effect, after, upto):
                out.extend(
                    (tick, gpu, xid) for gpu in gpus if tick <= self.lost_tick[gpu] or effect.lost
                )
        return sorted(out)

    # -- frames ---------------------------------------------------------------------------------
    def frames(self, tick: int) -> list[GpuFrame]:
        """What each GPU reports at `tick` (>= 1); cached for the latest tick."""
        if tick == self._frame_tick:
            return self._frames
        start = max(0, tick - self.util_window)
        s = self.evaluate(start, tick)
        if start <= self._frontier < tick and not self._resets(self._frontier, tick):
            self._accumulate(s, slice(self._frontier - start, None))  # reuse the window's ticks
            self._frontier = tick
        cum = self.cumulative(tick)
        self._frame_cum = cum.copy()
        m = self.model
        counters = (cum[:, _COUNTER_COLS] - self._reset_base[:, _COUNTER_COLS]).tolist()
        busy_mean = s.busy.mean(axis=1).tolist()
        dram_mean = s.act[3].mean(axis=1).tolist()
        power_mean = s.power_w.mean(axis=1).tolist()
        temp_level = s.temp_level.mean(axis=1).tolist()
        last = -1
        power_now = s.power_w[:, last].tolist()
        clock_now = s.clock_factor[:, last].tolist()
        reasons_now = s.reasons[:, last].tolist()
        mem_now = s.memory_used[:, last].tolist()
        pcie_now = (s.traffic[:2, :, last] / 1000).astype(np.int64).tolist()
        limits = self.power_limit_w(tick).tolist()
        noise = _hash_unit(self._noise_keys[0] + np.uint64(tick * 7919)).tolist()
        t_s = (tick - 1) * TICK_S
        ts_us = self.epoch_us + int(round(t_s * 1e6))
        offset = self.scenario.counter_offset
        ecc = self._ecc_counts(t_s)
        # Per-link counters: each link's fixed share of the total, wrapping like uint64.
        nvl = (
            cum[:, [CI["nvlink_tx"], CI["nvlink_rx"]]]
            - self._reset_base[:, [CI["nvlink_tx"], CI["nvlink_rx"]]]
        )
        shares = (nvl.T[:, :, None] * self.link_weights[None]).astype(np.uint64)
        links = (shares + np.uint64(offset % _U64)).tolist()
        frames = []
        for g in range(self.gpus):
            busy, clock = busy_mean[g], clock_now[g]
            temp = (
                m.temp_idle_c
                + (temp_level[g] - m.temp_idle_c) * (0.35 + 0.65 * busy)
                + 0.6 * noise[g]
            )
            pcie_tx, pcie_rx, nvl_tx, nvl_rx, energy_j = counters[g]
            idle = clock < 0
            sm_clock = m.idle_sm_clock_mhz if idle else int(m.max_sm_clock_mhz * clock / 15) * 15
            frames.append(
                GpuFrame(
                    lost=tick >= self.lost_tick[g],
                    timestamp_us=ts_us,
                    util_gpu=int(round(busy * 100)),
                    util_memory=int(round(dram_mean[g] * 100)),
                    power_avg_mw=int(power_mean[g] * 1000),
                    power_inst_mw=int(power_now[g] * 1000),
                    power_limit_mw=int(limits[g] * 1000),
                    energy_mj=(offset + int(energy_j * 1000)) % _U64,
                    temperature_c=int(round(temp)),
                    memory_temp_c=int(round(temp + 6)),
                    fan_pct=int(min(100, max(30, 30 + 1.4 * (temp - 40)))),
                    sm_clock_mhz=sm_clock,
                    mem_clock_mhz=m.mem_clock_mhz if (m.hbm or not idle) else 405,
                    video_clock_mhz=int(m.max_video_clock_mhz * 0.9) if not idle else 540,
                    reasons=reasons_now[g],
                    pstate=m.pstate_idle if idle else m.pstate_busy,
                    memory_used=int(mem_now[g]),
                    pcie_tx_bytes=(offset + int(pcie_tx)) % _U64,
                    pcie_rx_bytes=(offset + int(pcie_rx)) % _U64,
                    pcie_tx_kbps=pcie_now[0][g],
                    pcie_rx_kbps=pcie_now[1][g],
                    nvlink_tx_bytes=links[0][g],
                    nvlink_rx_bytes=links[1][g],
                    sbe_volatile=ecc[g][0],
                    dbe_volatile=ecc[g][1],
                    remapped_cor=ecc[g][0] if m.remapped_rows else 0,
                    remapped_unc=ecc[g][1] if m.remapped_rows else 0,
                    remap_pending=1 if ecc[g][1] and m.remapped_rows else 0,
                    pcie_replays=int(t_s // 1800),
                )
            )
        self._frames, self._frame_tick = frames, tick
        return frames

    def frame_cumulative(self, tick: int) -> np.ndarray:
        """Raw (never reset) integrals at `tick`, as GPM samples record them."""
        self.frames(tick)
        return self._frame_cum

    def _ecc_counts(self, t_s: float) -> list[tuple[int, int]]:
        counts = [[0, 0] for _ in range(self.gpus)]
        for effect, gpu_mask in self._points:
            if effect.xid in _DBE_XIDS or effect.xid in _SBE_XIDS:
                n = effect.occurrences(t_s)
                col = 1 if effect.xid in _DBE_XIDS else 0
                for g in np.flatnonzero(gpu_mask).tolist():
                    counts[g][col] += n
        return [(a, b) for a, b in counts]

    # -- per-process samples --------------------------------------------------------------------
    def process_samples(self, tick: int) -> list[list[tuple[int, int, int]]]:
        """Per GPU, the retained utilization samples (tick, sm %, mem %) up to `tick`.

        A sample at tick s averages [s - period, s); samples already computed are
        kept, so steady polling evaluates one new period at a time.
        """
        if tick == self._proc_tick:
            return self._proc_samples
        period = self.util_window
        last = (tick // period) * period
        first = max(period, last - (_PROC_SAMPLES_KEPT - 1) * period)
        known = self._proc_known
        for old in [k for k in known if k < first]:
            del known[old]
        missing = [k for k in range(first, last + 1, period) if k not in known]
        if missing:
            lo = missing[0]
            n = (last - lo) // period + 1
            s = self.evaluate(lo - period, last)
            busy = (
                (s.busy.reshape(self.gpus, n, period).mean(axis=2) * 100)
                .round()
                .astype(int)
                .T.tolist()
            )
            dram = (
                (s.act[3].reshape(self.gpus, n, period).mean(axis=2) * 100)
                .round()
                .astype(int)
                .T.tolist()
            )
            for j in range(n):
                known[lo + j * period] = list(zip(busy[j], dram[j], strict=True))
        ticks = sorted(known)
        out = [[(k, *known[k][g]) for k in ticks] for g in range(self.gpus)]
        self._proc_tick, self._proc_samples = tick, out
        return out
