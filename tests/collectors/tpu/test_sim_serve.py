"""``accelwatch sim serve``: a simulated TPU VM other tools (tpu-info) can be tried against."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from tpu_info import device as tpu_device
from tpu_info import metrics as tpu_info_metrics

from collectors.tpu import discovery

CLI = [sys.executable, "-m", "agent"]


def test_sim_serve_serves_a_tpu_vm_until_terminated(tmp_path):
    root = tmp_path / "vm"
    proc = subprocess.Popen(
        [*CLI, "sim", "serve", "tpu-v5e-8-healthy", "--port", "0", "--sys-root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("serving tpu-v5e-8-healthy (8x TPU v5e) on 127.0.0.1:"), first
        address = first.rsplit(" ", 1)[-1].strip()
        exports = dict(
            proc.stdout.readline().strip().removeprefix("export ").split("=", 1) for _ in range(5)
        )
        assert exports["ACCELWATCH_TPU_RUNTIME"] == address
        usage = tpu_info_metrics.get_chip_usage(tpu_device.TpuChip.V5E, addr=address)
        assert [u.device_id for u in usage] == list(range(8))
        assert usage[0].total_memory == 16 * 2**30 and usage[0].duty_cycle_pct > 90
        chips = discovery.discover(
            exports["ACCELWATCH_TPU_SYS_ROOT"], exports["ACCELWATCH_TPU_DEV_ROOT"]
        )
        assert len(chips) == 8 and chips[0].type.name == "v5e"
        assert (root.stat().st_mode & 0o777) == 0o700
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err
    assert root.is_dir()  # a directory the user named is left for them


def test_sim_serve_a_gpu_only_scenario_is_a_usage_error():
    result = subprocess.run([*CLI, "sim", "serve", "healthy"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no standalone simulated devices" in result.stderr


def test_sim_serve_on_a_busy_port_is_one_line_and_exit_1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run(
            [*CLI, "sim", "serve", "tpu-v5e-8-healthy", "--port", str(port), "--duration", "1"],
            capture_output=True,
            text=True,
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr.splitlines()[-1]
