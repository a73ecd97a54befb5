"""Deterministic synthetic ticks (host, process tree, GPUs) built with BatchBuilder.

Used by the TUI tests and the TUI benchmark: a real Session/Store/SnapshotHub is fed these
batches at a fixed simulated clock, so every number on screen is known in advance.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from agent.app.session import Session, SessionConfig
from agent.model import Batch, BatchBuilder, RunInfo

T0 = 1_700_000_000.0
ROOT_PID = 4242
GIB = 2**30


@dataclass
class SyntheticJob:
    """A job with ``workers`` loader processes and ``gpus`` GPUs, ``used`` of them by the job."""

    gpus: int = 2
    used: int = 1
    workers: int = 2
    throttled: bool = False
    cores: int = 4
    interval: float = 1.0

    @property
    def pids(self) -> list[int]:
        return [ROOT_PID, *range(ROOT_PID + 1, ROOT_PID + 1 + self.workers)]

    def ts(self, tick: int) -> float:
        return T0 + tick * self.interval

    def batches(self, tick: int) -> list[Batch]:
        now = self.ts(tick)
        return [self._host(now, tick), self._processes(now, tick), self._gpus(now, tick)]

    def _host(self, now: float, tick: int) -> Batch:
        b = BatchBuilder("host", now)
        b.add("host", "host.cpu.utilization", 0.40)
        for core in range(self.cores):
            b.add(f"cpu{core}", "host.cpu.utilization", (core + 1) / (self.cores + 1))
        b.add_many(
            "host",
            {
                "host.memory.total": 64 * GIB,
                "host.memory.used": 16 * GIB,
                "host.memory.utilization": 0.25,
            },
        )
        b.add("disk:nvme0n1", "host.disk.read_bytes", tick * 50 * 2**20)
        b.add("disk:nvme0n1", "host.disk.write_bytes", tick * 10 * 2**20)
        b.add("net:eth0", "host.net.rx_bytes", tick * 2 * 2**20)
        b.add("net:eth0", "host.net.tx_bytes", tick * 2**20)
        b.add("ib:mlx5_0/1", "host.ib.rx_bytes", tick * 3 * GIB)
        b.add("ib:mlx5_0/1", "host.ib.tx_bytes", tick * 3 * GIB)
        return b.build()

    def _processes(self, now: float, tick: int) -> Batch:
        b = BatchBuilder("process", now)
        for i, pid in enumerate(self.pids):
            main = i == 0
            b.add_many(
                str(pid),
                {
                    "process.cpu.utilization": 1.5 if main else 0.25 + 0.05 * i,
                    "process.memory.rss": (4 * GIB if main else (512 + i) * 2**20),
                    "process.io.read_bytes": tick * (1 if main else 20 + i) * 2**20,
                    "process.io.write_bytes": tick * 2**20 if main else 0,
                    "process.threads": 12 if main else 2,
                },
            )
            if tick == 0:
                b.describe(
                    str(pid),
                    pid=pid,
                    ppid=1 if main else ROOT_PID,
                    name="python",
                    role="main" if main else "worker",
                    cmdline=["python", "train.py"]
                    if main
                    else ["python", "-c", "from multiprocessing.spawn import spawn_main"],
                )
        return b.build()

    def _gpus(self, now: float, tick: int) -> Batch:
        b = BatchBuilder("nvml", now)
        for g in range(self.gpus):
            gpu = f"gpu{g}"
            used = g < self.used
            busy = (0.90 + 0.01 * (tick % 5)) if used else 0.0
            hot = self.throttled and used
            b.add_many(
                gpu,
                {
                    "gpu.utilization": busy,
                    "gpu.sm.activity": busy * 0.8,
                    "gpu.tensor.activity": busy * 0.5,
                    "gpu.memory.used": (60 if used else 1) * GIB,
                    "gpu.memory.total": 80 * GIB,
                    "gpu.power": 650.0 if used else 70.0,
                    "gpu.power.limit": 700.0,
                    "gpu.temperature": 91.0 if hot else (70.0 if used else 35.0),
                    "gpu.clock.sm": 1200.0 if hot else 1980.0,
                    "gpu.clock.sm.max": 1980.0,
                    "gpu.clock.memory": 2619.0,
                    "gpu.clock_event.hw_thermal": 1.0 if hot else 0.0,
                    "gpu.clock_event.sw_power_cap": 0.0,
                    "gpu.pcie.tx_throughput": 1.5e9 if used else 0.0,
                    "gpu.pcie.rx_throughput": 3.0e9 if used else 0.0,
                    "gpu.nvlink.tx_throughput": 40e9 if used else 0.0,
                    "gpu.nvlink.rx_throughput": 40e9 if used else 0.0,
                },
            )
            if used:
                b.add(f"{gpu}/pid{ROOT_PID}", "gpu.process.memory", 59 * GIB)
            if tick == 0:
                b.describe(
                    gpu,
                    name="NVIDIA H100 80GB HBM3",
                    uuid=f"GPU-0000-{g}",
                    used_by_job=used,
                    index=g,
                )
        return b.build()

    def findings(self, tick: int) -> list[dict]:
        """What a live analysis would say at ``tick``: thermal throttling once throttled."""
        if not self.throttled or tick < 2:
            return []
        return [
            {
                "rule": "gpu_thermal_throttle",
                "severity": "warning",
                "entity": "gpu0",
                "summary": "gpu0 is thermally throttled: SM clock 1200 of 1980 MHz at 91 °C",
                "next_step": "Check the node's cooling and airflow; compare with other nodes.",
                "evidence": {
                    "metric": "gpu.clock_event.hw_thermal",
                    "window_s": 60,
                    "temperature_c": 91.0,
                    "sm_clock_mhz": 1200,
                },
                "start_ts": self.ts(2),
                "end_ts": None,
            }
        ]


def synthetic_session(
    db_path: str, job: SyntheticJob, ticks: int, *, with_child: bool = True
) -> Session:
    """A real Session (store + hub) fed ``ticks`` synthetic ticks; its child is a real sleep.

    The child makes ``target_alive`` real: kill it and the viewer sees the job end.
    """
    session = Session(
        SessionConfig(db_path=db_path, interval=job.interval, headless=False, live_analysis=False)
    )
    if with_child:
        session.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    session.run = RunInfo(
        run_id="run-synthetic",
        name="llama-finetune",
        pid=ROOT_PID,
        cmdline=["python", "train.py", "--epochs", "3"],
        cwd="/work",
        host="node1",
        started=T0 - 5 * 60 - 7,
        interval=job.interval,
        db_path=db_path,
        env={"RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "0"},
        simulated=True,
        scenario="synthetic",
    )
    session.store.write_run(session.run)
    session.context = session.build_context()
    for tick in range(ticks):
        feed(session, job, tick)
    return session


def feed(session: Session, job: SyntheticJob, tick: int) -> None:
    """Write one tick to the store and publish it on the hub, as the sampler would."""
    batches = job.batches(tick)
    session.store.write_ticks([(session.run.run_id, batches)])
    session.context.publish_findings(job.findings(tick))
    session.hub.publish(
        job.ts(tick),
        batches,
        {
            "ticks": tick + 1,
            "missed_ticks": 0,
            "samples": sum(len(b) for b in batches),
            "disabled": {},
        },
    )


def end_session(session: Session) -> None:
    """Stop the synthetic child and finalize like the CLI does."""
    if session.child is not None and session.child.poll() is None:
        session.child.kill()
    session.request_stop("user quit")
    session.finish()
