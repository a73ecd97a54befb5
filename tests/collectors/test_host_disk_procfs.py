"""Networks and disks from one kept-open read of ``net/dev`` / ``diskstats``: psutil's values.

psutil's ``net_io_counters(pernic=True)`` and ``disk_io_counters(perdisk=True)`` are the
reference: each written file is read by both (psutil pointed at the same root), through
wraps, resets, devices that vanish and come back, and every diskstats line format psutil knows.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import psutil
import pytest

from agent.source import CollectContext
from collectors.disk import DiskCollector
from collectors.host import HostCollector
from collectors.procfs import KeptFile, Unwrapped

_NET_HEAD = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
    "drop fifo colls carrier compressed\n"
)


def _net_dev(nics: dict[str, list[int]]) -> str:
    return _NET_HEAD + "".join(
        f"{name:>6}: " + " ".join(map(str, values)) + "\n" for name, values in nics.items()
    )


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An injected procfs root (the machine's stat, meminfo, vmstat), psutil reading it too."""
    for name in ("stat", "meminfo", "vmstat"):
        shutil.copy(f"/proc/{name}", tmp_path / name)
    (tmp_path / "net").mkdir()
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(tmp_path))
    psutil.net_io_counters.cache_clear()
    psutil.disk_io_counters.cache_clear()
    yield tmp_path
    psutil.net_io_counters.cache_clear()
    psutil.disk_io_counters.cache_clear()


def _rows(batch) -> dict[tuple[str, str], float]:
    return {(e, m): v for e, m, v in zip(batch.entities, batch.metrics, batch.values)}


def _psutil_net() -> dict[tuple[str, str], float]:
    out = {}
    for name, io in psutil.net_io_counters(pernic=True).items():
        if name == "lo":
            continue
        e = f"net:{name}"
        out[(e, "host.net.rx_bytes")] = float(io.bytes_recv)
        out[(e, "host.net.tx_bytes")] = float(io.bytes_sent)
        out[(e, "host.net.rx_packets")] = float(io.packets_recv)
        out[(e, "host.net.tx_packets")] = float(io.packets_sent)
        out[(e, "host.net.errors")] = float(io.errin + io.errout)
    return out


def _nic_steps(seed: int, ticks: int = 40) -> list[dict[str, list[int]]]:
    """Interfaces whose counters grow, wrap or reset to small values, vanish and come back."""
    rng = random.Random(seed)
    state = {name: [rng.randrange(1 << 40) for _ in range(16)] for name in ("lo", "eth0", "ib0")}
    steps = []
    for _ in range(ticks):
        for values in state.values():
            for i in range(16):
                roll = rng.random()
                if roll < 0.05:
                    values[i] = rng.randrange(1000)  # a reset or a 32-bit wrap
                elif roll < 0.9:
                    values[i] += rng.randrange(1 << 20)
        shown = {n: list(v) for n, v in state.items() if n == "lo" or rng.random() > 0.15}
        if rng.random() < 0.1:
            shown[f"veth{rng.randrange(3)}"] = [rng.randrange(1 << 30) for _ in range(16)]
        steps.append(shown)
    return steps


@pytest.mark.parametrize("seed", range(4))
def test_network_counters_of_one_net_dev_read_are_psutils_through_wraps_and_vanished_nics(
    proc, seed
):
    collector = HostCollector(proc=str(proc))
    collector.start(CollectContext())
    for tick, nics in enumerate(_nic_steps(seed)):
        (proc / "net" / "dev").write_text(_net_dev(nics))
        got = {
            k: v
            for k, v in _rows(collector.collect(float(tick))).items()
            if k[1].startswith("host.net.")
        }
        assert got == _psutil_net(), f"tick {tick}"


def test_network_counters_of_this_machine_are_psutils_read_around_them():
    """The kernel's own file, kept open: between psutil's readings just before and after."""
    collector = HostCollector()
    collector.start(CollectContext())
    for _ in range(3):
        before = _psutil_net()
        got = {
            k: v for k, v in _rows(collector.collect(1.0)).items() if k[1].startswith("host.net.")
        }
        after = _psutil_net()
        assert got.keys() == before.keys() == after.keys()
        assert all(before[k] <= got[k] <= after[k] for k in got)
    collector.close()


def _diskstats(disks: dict[str, list[int]], columns: int) -> str:
    lines = []
    for minor, (name, values) in enumerate(disks.items()):
        if columns == 15:  # Linux 2.4: major minor blocks name, then the 11 counters
            lines.append(f"   8 {minor} 12345 {name} " + " ".join(map(str, values[:11])))
        elif columns == 7:  # a 2.6 partition: reads, sectors read, writes, sectors written
            lines.append(f"   8 {minor} {name} {values[0]} {values[2]} {values[4]} {values[6]}")
        else:
            lines.append(f" 259 {minor} {name} " + " ".join(map(str, values[: columns - 3])))
    return "\n".join(lines) + "\n"


def _psutil_disks() -> dict[tuple[str, str], float]:
    out = {}
    for name, io in psutil.disk_io_counters(perdisk=True).items():
        if name.startswith(("loop", "ram", "zram")):
            continue
        e = f"disk:{name}"
        out[(e, "host.disk.read_bytes")] = float(io.read_bytes)
        out[(e, "host.disk.write_bytes")] = float(io.write_bytes)
        out[(e, "host.disk.read_ops")] = float(io.read_count)
        out[(e, "host.disk.write_ops")] = float(io.write_count)
        out[(e, "host.disk.busy_time")] = io.busy_time / 1000
    return out


@pytest.mark.parametrize("columns", [14, 18, 20, 15, 7])
@pytest.mark.parametrize("seed", range(2))
def test_disk_counters_of_one_diskstats_read_are_psutils_in_every_line_format(proc, columns, seed):
    rng = random.Random(seed * 100 + columns)
    names = ["vda", "vda1", "nvme0n1", "loop0", "zram0", "ram1", "dm-0"]
    state = {n: [rng.randrange(1 << 36) for _ in range(17)] for n in names}
    collector = DiskCollector(proc=str(proc))
    for tick in range(30):
        for values in state.values():
            for i in range(17):
                if rng.random() < 0.05:
                    values[i] = rng.randrange(100)  # wrapped (32-bit kernels) or reset
                else:
                    values[i] += rng.randrange(5000)
        shown = {n: v for n, v in state.items() if rng.random() > 0.1}
        (proc / "diskstats").write_text(_diskstats(shown, columns))
        assert _rows(collector.collect(float(tick))) == _psutil_disks(), f"tick {tick}"


def test_disk_counters_of_this_machine_are_psutils_read_around_them():
    collector = DiskCollector()
    for _ in range(3):
        before = _psutil_disks()
        got = _rows(collector.collect(1.0))
        after = _psutil_disks()
        assert got.keys() == before.keys() == after.keys()
        assert all(before[k] <= got[k] <= after[k] for k in got)
    collector.close()


def test_an_unknown_diskstats_line_falls_back_to_psutil(proc):
    (proc / "diskstats").write_text("8 0 sda 1 2 3\n")  # 6 columns: psutil's ValueError too
    with pytest.raises(ValueError):
        psutil.disk_io_counters(perdisk=True)
    with pytest.raises(ValueError):
        DiskCollector(proc=str(proc)).collect(1.0)


@pytest.mark.parametrize("seed", range(6))
def test_unwrapped_counters_follow_psutils_wrap_rule(seed):
    rng = random.Random(seed)
    reference = psutil._common._WrapNumbers()
    ours = Unwrapped()
    state = {k: [rng.randrange(1000) for _ in range(5)] for k in "abcd"}
    for _ in range(300):
        for values in state.values():
            for i in range(5):
                values[i] = (
                    rng.randrange(50) if rng.random() < 0.1 else values[i] + rng.randrange(9)
                )
        shown = {k: tuple(v) for k, v in state.items() if rng.random() > 0.2}
        if not shown:  # psutil's functions return {} before their wrap rule sees it
            assert ours.run({}) == {}
            continue
        assert ours.run(dict(shown)) == reference.run(dict(shown), "x")


def test_a_kept_procfs_file_is_read_afresh_with_one_descriptor():
    kept = KeptFile(f"/proc/{os.getpid()}/stat", keep=True)
    first = kept.read()
    fd = kept.fd
    sum(i * i for i in range(300_000))  # burn CPU: utime moves
    second = kept.read()
    assert kept.fd == fd is not None
    assert first != second and second.startswith(first.split(b")")[0])
    kept.close()
    assert kept.fd is None


def test_a_file_of_an_injected_root_is_read_by_path_each_time(tmp_path):
    path = tmp_path / "diskstats"
    path.write_text("one\n")
    kept = KeptFile(str(path), keep=False, records=True)
    assert kept.read() == b"one\n"
    replaced = tmp_path / "new"
    replaced.write_text("two\n")
    os.replace(replaced, path)  # a capture rewriting its file: a kept descriptor would not see it
    assert kept.read() == b"two\n"
    assert kept.fd is None


def test_a_kept_file_whose_read_fails_is_opened_again(tmp_path):
    kept = KeptFile("/proc/stat", keep=True)
    kept.read()
    os.close(kept.fd)  # gone stale under us
    assert kept.read().startswith(b"cpu")
    kept.close()
