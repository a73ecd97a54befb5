"""Real DuckDB files written through the Store API, fast and with chosen numbers: per-rank
steps, GPUs (busy, memory, energy), stored findings, and the client's config table."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.analysis.finding import Finding, store_findings
from agent.model import Batch, BatchBuilder, RunInfo
from agent.store import Store
from agent.tracking.tables import METRICS_RECORD, SETTINGS_RECORD, metric_columns, setting_columns

T0 = 1_700_000_000.0
GIB = 2**30


@dataclass
class Recording:
    """One run: ``seconds`` ticks of 1 s; ``step_time`` per rank (a value, or per-tick list)."""

    run_id: str
    name: str = "train"
    seconds: int = 30
    t0: float = T0
    ranks: Sequence[int] = (0,)
    #: Seconds per step: one value, one per rank, or a function of (rank, tick).
    step_time: float | Mapping[int, float] | Callable[[int, int], float] = 0.1
    gpus: int = 2
    busy: float = 0.9
    power_w: float = 300.0
    memory_gib: float = 40.0
    tags: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    host: str = "node-a"
    config: dict[str, Any] | None = None
    findings: Sequence[str] = ()
    status: str = "finished"
    #: Training metrics logged every tick by rank 0: name → value at tick i.
    metrics: Mapping[str, Callable[[int], float]] = field(default_factory=dict)
    #: More series, each 1.0 every tick: (source, entity, metric).
    extra: Sequence[tuple[str, str, str]] = ()


def _step_time(rec: Recording, rank: int, tick: int) -> float:
    st = rec.step_time
    if callable(st):
        return float(st(rank, tick))
    return float(st[rank]) if isinstance(st, Mapping) else float(st)


def ticks(rec: Recording) -> list[list[Batch]]:
    out = []
    steps = dict.fromkeys(rec.ranks, 0)
    for i in range(rec.seconds):
        ts = rec.t0 + i + 1
        gpu = BatchBuilder("nvml", ts)
        for g in range(rec.gpus):
            gpu.add_many(
                f"gpu{g}",
                {
                    "gpu.utilization": rec.busy,
                    "gpu.memory.used": rec.memory_gib * GIB,
                    "gpu.memory.total": 80 * GIB,
                    "gpu.power": rec.power_w,
                    "gpu.energy": rec.power_w * (i + 1),
                },
            )
            if i == 0:
                gpu.describe(f"gpu{g}", name="NVIDIA H100 80GB HBM3", uuid=f"GPU-{rec.host}-{g}")
        host = BatchBuilder("host", ts)
        host.add_many("host", {"host.cpu.utilization": 0.3})
        step = BatchBuilder("steps", ts)
        for r in rec.ranks:
            t = _step_time(rec, r, i)
            steps[r] += int(round(1.0 / t))
            step.add_many(f"rank{r}", {"step.time": t, "step.count": steps[r]})
        more = [BatchBuilder(source, ts) for source in dict.fromkeys(s for s, _, _ in rec.extra)]
        for b in more:
            for source, entity, metric in rec.extra:
                if source == b.source:
                    b.add(entity, metric, 1.0)
        out.append([gpu.build(), host.build(), step.build(), *(b.build() for b in more)])
    return out


def finding(rule: str, t0: float, seconds: float) -> Finding:
    start = datetime.fromtimestamp(t0 + 1, timezone.utc).replace(tzinfo=None)
    end = datetime.fromtimestamp(t0 + seconds, timezone.utc).replace(tzinfo=None)
    return Finding(rule, "warning", "gpu0", start, end, f"{rule} seen", "look", {}, seconds / 2)


def record(db: Path | str, *recordings: Recording) -> Path:
    """Write the runs into ``db`` (created, or appended to) and return its path."""
    store = Store(db)
    try:
        for rec in recordings:
            info = RunInfo(
                run_id=rec.run_id, name=rec.name, pid=1000, cmdline=["python", "train.py"],
                cwd="/job", host=rec.host, started=rec.t0, interval=1.0, db_path=str(db),
                tags=dict(rec.tags), env=dict(rec.env), mode="run",
                ended=None if rec.status == "running" else rec.t0 + rec.seconds,
                exit_code=0, status=rec.status,
            )  # fmt: skip
            store.write_run(info)
            store.write_ticks([(rec.run_id, batches) for batches in ticks(rec)])
            if rec.findings:
                store_findings(
                    store.con,
                    rec.run_id,
                    [finding(r, rec.t0, rec.seconds) for r in rec.findings],
                    live=False,
                )
            records: dict[str, Any] = {}
            if rec.config:  # as the training client's accelwatch.config() arrives
                records[SETTINGS_RECORD] = setting_columns(
                    [(rec.t0, "config", 0, k, json.dumps(v)) for k, v in rec.config.items()]
                )
            if rec.metrics:
                records[METRICS_RECORD] = metric_columns(
                    [(rec.t0 + i + 1, 0, i, name, value(i)) for name, value in rec.metrics.items()
                     for i in range(rec.seconds)]
                )  # fmt: skip
            if records:
                store.write_ticks([(rec.run_id, [Batch("steps", rec.t0, [], [], [],
                                                       records=records)])])  # fmt: skip
    finally:
        store.close()
    return Path(db)
