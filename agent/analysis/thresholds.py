"""Every threshold the rules use, once, with where it comes from (see docs/analysis.md)."""

from __future__ import annotations

# -- GPU activity --------------------------------------------------------------------------
#: A bucket is "low utilization" below this busy share (Nsight Systems' expert rule flags
#: timeline chunks where the GPU is busy less than 50% of the time).
LOW_BUSY = 0.5
#: A sample below this utilization counts as an idle gap; at >= 0.5 s sampling each idle sample
#: is a gap of at least the Nsight Systems starvation length (500 ms).
IDLE_SAMPLE = 0.05
STARVATION_GAP_S = 0.5
#: SageMaker Debugger LowGPUUtilization: p95 below 70% is underuse; p95 above 70% with p5
#: below 10% is fluctuating utilization.
UTIL_P95 = 0.70
UTIL_P5 = 0.10
#: DCGM profiling guidance: SM activity below 0.5 is likely an ineffective use of the GPU.
SM_ACTIVITY_LOW = 0.5
#: A GPU counts as "busy" (kernels resident most of the time) at or above this utilization.
BUSY = 0.8

# -- input pipeline (XProf input-pipeline analyzer bands) -----------------------------------
#: Share of time the accelerator waits: < 5% not input bound, 5-20% moderately, > 20% highly.
INPUT_WAIT_MODERATE = 0.05
INPUT_WAIT_HIGH = 0.20
#: SageMaker Debugger CPUBottleneck: host CPU above 90% while the GPU waits.
CPU_SATURATED = 0.90
#: A data-loader process counts as saturated at this many cores (one full core).
LOADER_PROCESS_SATURATED = 0.9
#: SageMaker Debugger IOBottleneck watches iowait; we flag 10% of all CPU time in iowait, or
#: a block device busy 80% of the time.
IOWAIT_HIGH = 0.10
DISK_BUSY_HIGH = 0.80

# -- transfers and communication -------------------------------------------------------------
#: PCIe bytes/s per lane and direction by generation (encoding overhead included).
PCIE_LANE_BYTES = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}
#: Practical PCIe throughput is ~75-80% of the theoretical; "near peak" is 60% of theoretical.
PCIE_NEAR_PEAK = 0.60
#: Below this traffic a link may legitimately downshift (power saving), so no downtrain finding.
PCIE_ACTIVE_BYTES = 1e9
#: NVLink per link and direction (NVLink 3/4: 25 GB/s); "high" traffic is 30% of the links' peak.
NVLINK_LINK_BYTES = 25e9
NVLINK_HIGH = 0.30
#: InfiniBand traffic considered high for one port (about 25 Gb/s of 100-400 Gb/s ports).
IB_HIGH_BYTES = 3e9

# -- efficiency ------------------------------------------------------------------------------
#: Tensor pipes idle while SMs are active: mixed precision (or TF32) is likely off.
TENSOR_LOW = 0.05
#: DRAM activity near the practical bandwidth peak (DCGM DRAM_ACTIVE ~0.8 and above).
DRAM_HIGH = 0.80
#: One host core pinned by the job's main (Python) process.
MAIN_PROCESS_PINNED = 0.90

# -- throttling ------------------------------------------------------------------------------
THROTTLE_ACTIVE = 0.5  # share of a bucket a throttle reason was active
CLOCK_BELOW_PEERS = 0.90  # SM clock below 90% of the peers' median while busy

# -- memory ----------------------------------------------------------------------------------
GPU_MEMORY_NEAR_FULL = 0.95
#: SageMaker Debugger GPUMemoryIncrease: flag growth above 5% of capacity.
GPU_MEMORY_GROWTH = 0.05
LEAK_MIN_R2 = 0.8
LEAK_MIN_SPAN_S = 60.0
SWAP_IN_BYTES = 1 << 20  # 1 MiB/s of swap-in is paging the job's working set
HOST_MEMORY_NEAR_FULL = 0.95

# -- stragglers (docs/analysis.md, "Stragglers") -------------------------------------------
#: NVIDIA resiliency-ext's default threshold for its performance scores (reference time /
#: the rank's time; its StragglerDetectionCallback flags a rank below 0.7). Below it a rank is
#: a critical straggler, and a device lags its peers.
STRAGGLER_SCORE = 0.7
#: An emerging straggler: in a window, both its relative score (peers' median / its time) and
#: its individual score (its own usual time / its time) are below this, i.e. it runs >= 18%
#: slower than its peers and than its own past at once.
STRAGGLER_INDIVIDUAL_SCORE = 0.85
#: ... and the episode extends over neighbouring windows where it is still half that much slower
#: than usual and slower than its peers (hysteresis, so the onset is found where it started).
STRAGGLER_ONSET_SCORE = 0.92
#: Per-rank windows after the run (at least 3 step spacings each), and while it runs.
STRAGGLER_WINDOW_S = 30.0
STRAGGLER_LIVE_WINDOW_S = 10.0
#: Flagged windows an emerging straggler needs (2 x 30 s after the run, 2 x 10 s live).
STRAGGLER_MIN_WINDOWS = 2
#: Live: a rank's usual speed is learnt from this much history before the analysed window.
STRAGGLER_LOOKBACK_S = 600.0
#: Step-time analysis needs this many ranks (a median of peers).
STRAGGLER_MIN_RANKS = 3
#: Persistent spread: a rank whose typical step time is this far above (below) its peers'
#: median over the run and over its first quarter is in the slower (faster) group.
SPREAD_BAND = 0.05
#: Speed change: a step in a rank's own series (relative to its peers) of at least this much,
#: between segments of >= CHANGE_MIN_WINDOWS windows, with a Welch t statistic >= CHANGE_T.
CHANGE_MIN = 0.10
CHANGE_T = 6.0
CHANGE_MIN_WINDOWS = 4
#: Synchronous ranks: the per-window spread of step times between ranks (max - min over the
#: median) stays below this, because every rank waits for the slowest.
SYNC_SPREAD = 0.02
#: Op traces: a rank's compute (forward/backward) per step against the median of its pipeline
#: stage's peers (>= 3 ranks); below this score for >= OPS_MIN_STEPS consecutive steps.
OPS_SCORE = 0.85
OPS_MIN_STEPS = 3

# -- hangs -----------------------------------------------------------------------------------
#: No progress for this long is a likely hang (flagged live well within a minute).
HANG_MIN_S = 30.0
#: Critical from here; PyTorch's NCCL watchdog aborts a stuck collective after 10 min by default.
HANG_CRITICAL_S = 120.0
NCCL_WATCHDOG_TIMEOUT_S = 600.0
HANG_SPIN_UTIL = 0.98
HANG_IDLE_UTIL = 0.02  # every job GPU at or below this utilization: idle, no kernels
HANG_SPIN_SM = 0.2  # "busy" GPUs with SM activity below this are spinning, not computing
HANG_CPU_IDLE = 0.10  # job CPU in cores below which processes make no host-side progress
HANG_TRAFFIC_BYTES = 1e6  # PCIe + NVLink bytes/s below which GPUs exchange nothing

#: A device queue at or above this many programs that does not drain while the device is flat
#: at idle or at full duty is stuck (a TPU's HLO queue behind a collective that never ends).
HANG_QUEUE_STUCK = 1.0

# -- runtime latencies (accelwatch's bands; TPU: libtpu HLO timing and megascale.*) ------------
#: The job's device queue averages at most this many programs: it ran empty, the device waits
#: for the host to enqueue the next step (XProf calls such a step "input bound").
QUEUE_EMPTY = 0.5
#: Host <-> device transfers: a p99 above 2 ms is slow (a 32 MiB batch over PCIe Gen4 x16 takes
#: about 1.5 ms), and they dominate when transfers occupy half the wall time (rate x median).
TRANSFER_P99_HIGH_S = 0.002
TRANSFER_TIME_SHARE = 0.5
#: Multi-slice: a cross-slice (DCN) transfer p99 above 5 ms or a collective p99 above 10 ms
#: is congested; in-slice ICI collectives take microseconds, healthy DCN ones about a millisecond.
DCN_P99_HIGH_S = 0.005
COLLECTIVE_P99_HIGH_S = 0.010

# -- periodic I/O stalls ----------------------------------------------------------------------
WRITE_BURST_BYTES = 50e6  # disk write rate of a burst
WRITE_BURST_FACTOR = 3.0  # ... and this many times the run's median write rate
CHECKPOINT_MIN_STALLS = 2

# -- hardware health --------------------------------------------------------------------------
#: DCGM health watch (PCIe): more than 8 replays per minute is unhealthy.
PCIE_REPLAYS_PER_MIN = 8.0
#: XIDs that mean the GPU or its memory failed (NVIDIA XID catalog); others are warnings.
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120})

# -- idle reservation -------------------------------------------------------------------------
IDLE_RESERVED_UTIL = 0.05  # p95 utilization of a GPU the job holds memory on

# -- live analysis ------------------------------------------------------------------------
#: Issue 14: the first live finding comes at most this long after a rule's minimum duration
#: (``Rule.min_duration_s``) has passed since the condition's onset.
LIVE_LATENCY_SLACK_S = 10.0
#: History a live pass gives a rule unless it declares its own ``lookback_s``.
LIVE_LOOKBACK_S = 60.0
#: A watch that held for the minimum but whose SQL pass did not confirm it retries after this,
#: then after twice as long each time, up to LIVE_REFRESH_S.
LIVE_RETRY_S = 3.0
#: While a confirmed rule's watch holds, its pass re-runs this often (extends the finding,
#: updates its evidence and severity); a pass costs 0.2-0.4 s of CPU, so 0.1% of a core at most.
LIVE_REFRESH_S = 300.0
#: Every rule, watched or not, runs at least this often (the safety net for rules without a
#: watch and for conditions a watch cannot see, such as swings across a whole window).
LIVE_FULL_PERIOD_S = 600.0
#: Issue 14: live analysis costs at most this share of one core at 8 GPUs / 32 processes / 1 Hz.
LIVE_CPU_TARGET = 0.003
#: While the hang watch holds but no pass has confirmed the hang yet, another pass follows
#: after this long (kept for the hang watch's own retry pacing).
HANG_RETRY_S = 5.0

# -- episodes ---------------------------------------------------------------------------------
MIN_EPISODE_S = 30.0  # a condition must hold this long to become a finding
EPISODE_GAP_S = 10.0  # episodes closer than this merge
