"""Host-side causes and device signals the simulator cannot produce: data loader, I/O,
host memory, checkpoint write bursts, PCIe link faults, and runs without any GPU."""

from __future__ import annotations

import pytest

from agent.analysis.rules import ALL_RULES
from agent.model import BatchBuilder
from tests.analysis.expect import assert_window, entities, of_rule, windows_s
from tests.analysis.recording import Recording, profile

RUN_S = 90


def after(start_s: float, value: float, before: float) -> object:
    return lambda t: value if t >= start_s else before


def checkpoint_writes(t: float) -> float:
    """2 GB/s while the checkpoint-stall scenario's GPUs pause (10 s + every 30 s, for 6 s)."""
    return 2e9 if t >= 10 and (t - 10) % 30 < 6 else 2e6


def test_saturated_loader_workers_make_input_bound_gpus_dataloader_bound(analysed):
    findings = analysed(
        "loader", Recording("input-bound", RUN_S, host=profile(worker_cpu=after(5, 1.0, 0.4)))
    )
    (f,) = of_rule(findings, "dataloader-bound")
    assert f.entity == "host"
    assert_window(f, 5, RUN_S)
    assert f.evidence["loader_cpu_max_cores"] == pytest.approx(1.0)
    assert f.evidence["gpu_idle_share"] >= 0.2
    assert of_rule(findings, "io-bound") == []


def test_loading_in_the_main_process_is_dataloader_bound(analysed):
    findings = analysed(
        "num-workers-0",
        Recording("input-bound", RUN_S, host=profile(workers=0, main_cpu=after(5, 1.0, 0.5))),
    )
    (f,) = of_rule(findings, "dataloader-bound")
    assert "no loader workers" in f.summary and f.evidence["loader_workers"] == 0
    assert_window(f, 5, RUN_S)


def test_iowait_makes_input_bound_gpus_io_bound(analysed):
    findings = analysed(
        "iowait",
        Recording(
            "input-bound",
            RUN_S,
            host=profile(iowait=after(5, 0.3, 0.01), disk_busy=after(5, 0.97, 0.1)),
        ),
    )
    (f,) = of_rule(findings, "io-bound")
    assert f.entity == "host" and f.severity == "warning"
    assert_window(f, 5, RUN_S)
    assert f.evidence["iowait"] == pytest.approx(0.3)
    assert of_rule(findings, "dataloader-bound") == []


def test_busy_gpus_with_busy_loaders_are_not_dataloader_bound(analysed):
    findings = analysed(
        "healthy-busy-host",
        Recording("healthy", RUN_S, host=profile(worker_cpu=1.0, cpu=0.95, iowait=0.3)),
    )
    assert of_rule(findings, "dataloader-bound") == [] and of_rule(findings, "io-bound") == []


def test_swap_in_is_host_memory_pressure_in_its_window(analysed):
    findings = analysed(
        "swap",
        Recording("healthy", RUN_S, host=profile(swap_in=lambda t: 50e6 if 30 <= t < 70 else 0.0)),
    )
    (f,) = of_rule(findings, "host-memory-pressure")
    assert f.entity == "host" and f.severity == "critical"
    assert_window(f, 30, 70, tolerance_s=2)


def test_checkpoint_stalls_coincide_with_write_bursts(analysed):
    findings = analysed(
        "checkpoint",
        Recording("checkpoint-stall", RUN_S, host=profile(disk_write=checkpoint_writes)),
    )
    (f,) = of_rule(findings, "checkpoint-stall")
    assert f.entity == "job"
    starts = [round(a) for a, _ in windows_s(f)]
    assert [abs(s - e) <= 2 for s, e in zip(starts, (10, 40, 70))] == [True] * 3
    assert f.evidence["periodic"] and f.evidence["period_s"] == pytest.approx(30, abs=2)
    assert of_rule(findings, "gpu-starvation") == []  # the stalls are explained


def _synthetic_gpus(t: float, b: BatchBuilder) -> None:
    """Two synthetic GPUs (no simulator): gpu1's link trains at Gen3 x8 and replays from 30 s."""
    for gpu in ("gpu0", "gpu1"):
        degraded = gpu == "gpu1"
        b.add_many(
            gpu,
            {
                "gpu.utilization": 0.95,
                "gpu.memory.used": 30e9,
                "gpu.memory.total": 80e9,
                "gpu.job.memory": 30e9,
                "gpu.clock.sm": 1400,
                "gpu.clock.sm.max": 1410,
                "gpu.pcie.rx_throughput": 4e9,
                "gpu.pcie.tx_throughput": 1e9,
                "gpu.pcie.link.gen": 3 if degraded else 4,
                "gpu.pcie.link.gen.max": 4,
                "gpu.pcie.link.width": 8 if degraded else 16,
                "gpu.pcie.link.width.max": 16,
                "gpu.pcie.replays": (max(0.0, t - 30) * 2 if degraded else 0.0),
                "gpu.energy": 400.0 * t,
            },
        )


def test_synthetic_gpus_show_a_downtrained_link_and_pcie_replays(analysed):
    findings = analysed("synthetic-gpus", Recording(None, RUN_S, extra=[("nvml", _synthetic_gpus)]))
    transfer = of_rule(findings, "h2d-transfer")
    assert [f.entity for f in transfer] == ["gpu1"]
    assert transfer[0].evidence["kind"] == "downtrained"
    assert transfer[0].evidence["width"] == 8
    (fault,) = of_rule(findings, "hardware-fault")
    assert fault.entity == "gpu1" and fault.severity == "warning"
    assert fault.evidence["pcie_replays_per_min"] == pytest.approx(120)
    assert abs(windows_s(fault)[0][0] - 30) <= 2


def test_cpu_only_run_gets_host_findings_without_errors(analysed):
    findings = analysed(
        "cpu-only",
        Recording(
            None,
            RUN_S,
            host=profile(
                iowait=after(20, 0.4, 0.01),
                disk_busy=after(20, 0.9, 0.05),
                mem_util=after(60, 0.97, 0.5),
            ),
        ),
    )
    assert {f.rule for f in findings} == {"io-bound", "host-memory-pressure"}
    (io,) = of_rule(findings, "io-bound")
    assert io.severity == "info" and io.evidence["gpu_idle_share"] is None
    assert_window(io, 20, RUN_S)
    assert entities(findings, "host-memory-pressure") == {"host"}


def test_quiet_cpu_only_run_has_no_findings(analysed):
    findings = analysed("cpu-only-quiet", Recording(None, RUN_S))
    assert findings == []
    assert len(ALL_RULES) >= 15


def _gpus_waiting_on_infiniband(t: float, b: BatchBuilder) -> None:
    """Two synthetic GPUs "busy" in collectives with empty SMs while InfiniBand moves 5 GB/s."""
    for gpu in ("gpu0", "gpu1"):
        b.add_many(
            gpu,
            {
                "gpu.utilization": 0.97,
                "gpu.sm.activity": 0.2,
                "gpu.tensor.activity": 0.05,
                "gpu.job.memory": 20e9,
            },
        )
    b.add_many("ib:mlx5_0/1", {"host.ib.rx_bytes": 2.5e9 * t, "host.ib.tx_bytes": 2.5e9 * t})


def test_infiniband_traffic_with_empty_sms_is_comm_bound(analysed):
    findings = analysed(
        "ib-comm",
        Recording(None, RUN_S, extra=[("nvml", lambda t, b: _gpus_waiting_on_infiniband(t, b))]),
    )
    comm = of_rule(findings, "comm-bound")
    assert {f.entity for f in comm} == {"gpu0", "gpu1"}
    assert comm[0].evidence["ib_bytes_per_s"] == pytest.approx(5e9, rel=0.01)
    assert comm[0].evidence["signal"] == "gpu.sm.activity"
    assert of_rule(findings, "launch-bound") == []
