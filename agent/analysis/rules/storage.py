"""Storage stalls that name the mount: input I/O bound on a slow filesystem, and checkpoint
stalls, with the mount's type, throughput and latency at the time.

Mount metrics are read by role from the frame's per-bucket aggregate ``aw_agg`` (see
:mod:`agent.analysis.rules.fabric` for the bucketing); the accelerators' busy share comes from
``aw_accel``. A flagged bucket
needs the job's accelerators mostly idle and one mount doing what explains it:

* ``storage-input-bound``: the mount is being read and its latency is high (at least
  ``SLOW_MS``) or at least ``SLOW_FACTOR`` times its own median over the run;
* ``storage-checkpoint-stall``: the mount writes a burst (at least ``WRITE_BURST_BYTES`` and
  ``WRITE_BURST_FACTOR`` times its median write rate).

Live, the watches read the tick: the job's accelerators mostly idle while a mount reads at
least ``MIN_READ_BYTES`` (input-bound: its latency against its median over the window is the
SQL's to judge) or writes at least ``WRITE_BURST_BYTES`` (checkpoint: against its median, the
SQL's). A checkpoint stall needs two buckets, so it shows one or two seconds after it begins.
"""

from __future__ import annotations

import json

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.rules.common import JOB_FILTER, by_entity, duration, job_params, pct
from agent.analysis.rules.common import rate as rate_text
from agent.analysis.rules.fabric import bucketed, role_metrics, role_values
from agent.analysis.thresholds import LOW_BUSY, WRITE_BURST_BYTES, WRITE_BURST_FACTOR
from agent.analysis.watch import Tick, mean

INPUT_BOUND = "storage-input-bound"
CHECKPOINT = "storage-checkpoint-stall"
SLOW_MS = 10.0
SLOW_FACTOR = 4.0
MIN_READ_BYTES = 1e6  # a mount read this little explains no starvation

_COUNTERS = ("mount.read_bytes", "mount.write_bytes")
_GAUGES = ("mount.latency", "mount.rtt")


def _mount_frame(ctx: Context) -> str:
    b = ctx.info.bucket_s
    return f"""
        WITH m AS ({bucketed(ctx, _COUNTERS, _GAUGES)}),
        g AS (SELECT t, avg(busy) AS busy FROM aw_accel WHERE {JOB_FILTER} AND busy IS NOT NULL
              GROUP BY t)
        SELECT m.entity, m.t, g.busy, coalesce(mount_read_bytes_inc, 0) / {b} AS read,
               coalesce(mount_write_bytes_inc, 0) / {b} AS write,
               mount_latency_max AS latency, mount_rtt_max AS rtt,
               median(mount_latency_max) OVER (PARTITION BY m.entity) AS latency_median,
               median(mount_latency_max) FILTER (WHERE g.busy >= {LOW_BUSY})
                   OVER (PARTITION BY m.entity) AS latency_busy,
               median(coalesce(mount_write_bytes_inc, 0) / {b}) OVER (PARTITION BY m.entity)
                   AS write_median
        FROM m JOIN g USING (t)"""


def _describe(ctx: Context, entity: str) -> dict:
    rows = ctx.rows(
        "SELECT attrs FROM entities WHERE run_id = $run AND entity = $e",
        {"run": ctx.info.window.run_id, "e": entity},
    )
    try:
        return json.loads(rows[0]["attrs"]) if rows and rows[0]["attrs"] else {}
    except (TypeError, ValueError):
        return {}


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def detect_input_bound(ctx: Context) -> list[Finding]:
    if not ctx.info.job_accelerators:
        return []
    sql = f"""
        SELECT *, busy < {LOW_BUSY} AND read >= {MIN_READ_BYTES}
                  AND (latency >= {SLOW_MS / 1000}
                       OR latency >= {SLOW_FACTOR} * latency_median) AS flag
        FROM ({_mount_frame(ctx)})"""
    columns = ["busy", "read", "latency", "rtt", "latency_median", "latency_busy"]
    eps = ctx.episodes(sql, columns, params=job_params(ctx))
    findings = []
    for mount, m_eps in by_entity(eps).items():
        busy, read, latency, rtt, median, usual = (weighted(m_eps, c) for c in columns)
        attrs = _describe(ctx, mount)
        point = attrs.get("mountpoint", mount.removeprefix("mount:"))
        fstype = attrs.get("fstype", "?")
        total = sum(e.duration_s for e in m_eps)
        devices = ctx.info.noun(ctx.info.job_accelerators, plural=True)
        rtt_text = f", RTT {_ms(rtt)}" if rtt is not None else ""
        # the mount's latency while the job kept its accelerators busy: the run's median
        # would mostly be the slow spell itself when the latency climbs for most of the run
        usual_text = (
            f"{_ms(usual)} when the {devices} were busy"
            if usual is not None
            else f"median {_ms(median)} over the run"
        )
        findings.append(
            ctx.finding(
                INPUT_BOUND,
                "warning",
                mount,
                m_eps,
                f"Input I/O bound on {point} ({fstype}): reads at {rate_text(read)} with "
                f"{_ms(latency)} per operation ({usual_text}){rtt_text}, while the "
                f"{devices} were {pct(1 - (busy or 0))} idle, for {duration(total)}.",
                f"Stage the dataset to local NVMe (or a page-cache-friendly format), read with "
                f"more parallel workers and larger requests, and ask the {fstype} server's "
                "owners about its load (nfsiostat / lctl get_param llite.*.stats show it too).",
                {
                    "metrics": [
                        *role_metrics("mount.read_bytes"),
                        *role_metrics("mount.latency"),
                        *role_metrics("mount.rtt"),
                        *ctx.info.metrics("busy"),
                    ],  # fmt: skip
                    "mountpoint": point,
                    "fstype": fstype,
                    "kind": attrs.get("kind"),
                    "read_bytes_per_s": read,
                    "latency_s": latency,
                    "rtt_s": rtt,
                    "latency_median_s": median,
                    "latency_while_busy_s": usual,
                    "accelerator_busy": busy,
                    "threshold": {
                        "busy_below": LOW_BUSY,
                        "latency_at_least_s": SLOW_MS / 1000,
                        "or_latency_vs_median": SLOW_FACTOR,
                    },  # fmt: skip
                },
                lost_fraction=1 - (busy or 0.0),
            )
        )
    return findings


def detect_checkpoint(ctx: Context) -> list[Finding]:
    if not ctx.info.job_accelerators:
        return []
    sql = f"""
        SELECT *, busy < {LOW_BUSY}
                  AND write >= greatest({WRITE_BURST_BYTES}, {WRITE_BURST_FACTOR} * write_median)
                  AS flag
        FROM ({_mount_frame(ctx)})"""
    eps = ctx.episodes(sql, ["busy", "write", "latency"], params=job_params(ctx),
                       min_duration_s=2 * ctx.info.bucket_s, gap_s=ctx.info.bucket_s)  # fmt: skip
    findings = []
    for mount, m_eps in by_entity(eps).items():
        busy, write, latency = (weighted(m_eps, c) for c in ("busy", "write", "latency"))
        attrs = _describe(ctx, mount)
        point = attrs.get("mountpoint", mount.removeprefix("mount:"))
        fstype = attrs.get("fstype", "?")
        total = sum(e.duration_s for e in m_eps)
        devices = ctx.info.noun(ctx.info.job_accelerators, plural=True)
        findings.append(
            ctx.finding(
                CHECKPOINT,
                "warning",
                mount,
                m_eps,
                f"The {devices} stalled during {len(m_eps)} write bursts to {point} ({fstype}) "
                f"at {rate_text(write)}, {_ms(latency)} per operation: {duration(total)} in all.",
                "Checkpoint asynchronously (torch.distributed.checkpoint async_save) or to local "
                f"NVMe first and copy to {point} in the background; write less often.",
                {
                    "metrics": [
                        *role_metrics("mount.write_bytes"),
                        *role_metrics("mount.latency"),
                        *ctx.info.metrics("busy"),
                    ],  # fmt: skip
                    "mountpoint": point,
                    "fstype": fstype,
                    "kind": attrs.get("kind"),
                    "stalls": len(m_eps),
                    "write_bytes_per_s": write,
                    "latency_s": latency,
                    "accelerator_busy": busy,
                },
                lost_fraction=1 - (busy or 0.0),
            )
        )
    return findings


_MOUNT_ROLES = _COUNTERS


def _mount_moves(tick: Tick, role: str, at_least: float) -> bool:
    """The job's accelerators mostly idle while a mount moves ``at_least`` bytes/s of ``role``."""
    busy = mean(tick.accel("busy").values())
    if busy is None or busy >= LOW_BUSY:
        return False
    return any(
        sum(roles.get(role, ())) >= at_least for roles in role_values(tick, _MOUNT_ROLES).values()
    )


def watch_input_bound(tick: Tick) -> bool:
    return _mount_moves(tick, "mount.read_bytes", MIN_READ_BYTES)


def watch_checkpoint(tick: Tick) -> bool:
    return _mount_moves(tick, "mount.write_bytes", WRITE_BURST_BYTES)


RULES = [
    Rule(
        INPUT_BOUND,
        "Input I/O bound on a slow mount",
        detect_input_bound,
        supersedes=("gpu-starvation", "io-bound"),
        watch=watch_input_bound,
    ),  # fmt: skip
    Rule(
        CHECKPOINT,
        "Checkpoint stall on a mount",
        detect_checkpoint,
        supersedes=("checkpoint-stall", "gpu-starvation"),
        min_duration_s=2.0,  # two buckets (``min_duration_s=2 * bucket`` above) at 1 Hz
        watch=watch_checkpoint,
    ),  # fmt: skip
]
