"""The host collector's one read of ``/proc/stat`` and ``meminfo`` gives psutil's values."""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil
import pytest

from agent.catalog.host import CPU_MODES
from agent.source import CollectContext
from collectors.host import HostCollector, cpu_times, memory


def _stat(cores: int, base: int, fields: int = 10) -> str:
    def line(name: str, k: int) -> str:
        values = [base * (i + 1) + 37 * k + i for i in range(fields)]
        return " ".join([name, *map(str, values)])

    cpu_lines = [line("cpu", 0)] + [line(f"cpu{i}", i + 1) for i in range(cores)]
    rest = ["intr 123 4 5 6", "ctxt 999", "btime 1700000000", "processes 42"]
    return "\n".join(cpu_lines + rest) + "\n"


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A procfs root with the machine's own meminfo and vmstat and a written ``stat``."""
    for name in ("meminfo", "vmstat"):
        shutil.copy(f"/proc/{name}", tmp_path / name)
    (tmp_path / "net").mkdir()
    shutil.copy("/proc/net/dev", tmp_path / "net" / "dev")
    (tmp_path / "stat").write_text(_stat(4, 1000))
    return tmp_path


def _psutil_at(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(root))


@pytest.mark.parametrize(("cores", "fields"), [(1, 10), (4, 10), (96, 10), (8, 8), (2, 7)])
def test_cpu_times_of_one_stat_read_are_psutils_of_two(proc, monkeypatch, cores, fields):
    """Old kernels (7 or 8 columns) and many cores alike: the very same floats."""
    (proc / "stat").write_text(_stat(cores, 123456, fields))
    _psutil_at(proc, monkeypatch)
    # psutil sizes its named tuple from the machine's stat at import: from this one here
    columns = psutil._psplatform._scputimes_ntuple(str(proc))
    monkeypatch.setattr(psutil._ntuples, "scputimes", columns)
    expected = [tuple(psutil.cpu_times()), *map(tuple, psutil.cpu_times(percpu=True))]
    assert cpu_times(str(proc)) == expected


def test_memory_of_one_meminfo_read_is_psutils(proc, monkeypatch):
    _psutil_at(proc, monkeypatch)
    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    assert memory(str(proc)) == (vm.total, vm.available, sw.total, sw.used, sw.sin, sw.sout)


def test_a_meminfo_without_a_field_falls_back_to_psutil(proc):
    text = (proc / "meminfo").read_text()
    (proc / "meminfo").write_text(
        "".join(x for x in text.splitlines(True) if "MemAvailable" not in x)
    )
    vm = psutil.virtual_memory()
    assert memory(str(proc))[0] == vm.total  # psutil's own reading of the machine


def _old_host_cpu(before, now):
    """The collector's values as computed from psutil's named tuples before one read."""

    def busy(t):
        d = t._asdict()
        total = sum(v for k, v in d.items() if k not in ("guest", "guest_nice"))
        return total - (d.get("idle", 0.0) + d.get("iowait", 0.0)), total

    (t0, *c0), (t1, *c1) = before, now
    out = {("host", "host.cpu.count"): float(len(c1))}
    (b1, a1), (b0, a0) = busy(t1), busy(t0)
    out[("host", "host.cpu.utilization")] = max(0.0, (b1 - b0) / (a1 - a0))
    d1, d0 = t1._asdict(), t0._asdict()
    for mode in CPU_MODES:
        if mode in d1:
            out[("host", f"host.cpu.{mode}")] = max(0.0, (d1[mode] - d0[mode]) / (a1 - a0))
    for i, (x1, x0) in enumerate(zip(c1, c0)):
        (b1, a1), (b0, a0) = busy(x1), busy(x0)
        out[(f"cpu{i}", "host.cpu.utilization")] = max(0.0, (b1 - b0) / (a1 - a0))
    return out


def test_host_cpu_values_are_the_ones_psutils_tuples_gave(proc, monkeypatch):
    _psutil_at(proc, monkeypatch)
    collector = HostCollector(proc=str(proc))
    collector.start(CollectContext(root_pid=None))
    before = [psutil.cpu_times(), *psutil.cpu_times(percpu=True)]
    (proc / "stat").write_text(_stat(4, 1010))  # every column moved, by its own amount
    now = [psutil.cpu_times(), *psutil.cpu_times(percpu=True)]
    batch = collector.collect(2.0)
    got = {(e, m): v for e, m, v in zip(batch.entities, batch.metrics, batch.values) if "cpu" in m}
    assert got == _old_host_cpu(before, now)
    vm = psutil.virtual_memory()
    rows = dict(zip(zip(batch.entities, batch.metrics), batch.values))
    assert rows[("host", "host.memory.total")] == float(vm.total)
    assert rows[("host", "host.memory.used")] == float(vm.total - vm.available)
    assert rows[("host", "host.load.15m")] == psutil.getloadavg()[2]
