"""Simulated fabric and storage: a scenario's ports and mounts as fake sysfs / procfs trees.

:class:`SimFabric` and :class:`SimStorage` integrate the scenario's rates into the counters of
a :class:`~collectors.sim.fabric_storage.tree.FabricTree` / ``StorageTree`` at ``advance(t)``
(scenario seconds); tests call it with simulated time. ``install`` (the sources' simulator)
writes the tree under a private temporary directory, advances it from a thread with the wall
clock, and points the collector there through ``ACCELWATCH_FABRIC_SYS_ROOT`` or
``ACCELWATCH_STORAGE_{SYS,PROC}_ROOT``; ``uninstall`` undoes all of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from collectors.sim.fabric_storage.scenario import (
    FabricPart,
    StoragePart,
    levels,
    parse_fabric,
    parse_storage,
)
from collectors.sim.fabric_storage.tree import FabricTree, SimMount, SimPort, StorageTree

ENV_FABRIC_SYS_ROOT = "ACCELWATCH_FABRIC_SYS_ROOT"
ENV_STORAGE_SYS_ROOT = "ACCELWATCH_STORAGE_SYS_ROOT"
ENV_STORAGE_PROC_ROOT = "ACCELWATCH_STORAGE_PROC_ROOT"
MB = 1_000_000
PID = 4242


class SimFabric:
    """Ports ``mlx5_<i>/1`` (or, dual-port, ``mlx5_<i // 2>/<i % 2 + 1>``) following the
    ``[fabric]`` table."""

    def __init__(self, part: FabricPart, sys_root: str | Path) -> None:
        self.part = part
        self.tree = FabricTree(sys_root)
        roce = part.link_layer == "Ethernet"
        for i in range(part.ports):
            device, port = divmod(i, part.ports_per_device)
            netdev = f"ens{device + 1}f{port}"
            self.tree.add_port(
                SimPort(
                    f"mlx5_{device}",
                    port + 1,
                    link_layer=part.link_layer,
                    counters=part.counters,
                    gbps=part.base["gbps"],
                    hw={} if roce else None,
                    netdev=netdev if roce else None,
                )  # fmt: skip
            )
            name = netdev if roce else f"ib{i}"
            self.tree.interface(name, int(part.base["gbps"] * 1000))
        for i in range(part.nics):
            self.tree.interface(f"eth{i}", int(part.nic["gbps"] * 1000))
            self.tree.statistics[f"eth{i}"] = [0, 0]
        self.t: float | None = None
        self.advance(0.0)

    def advance(self, t: float) -> None:
        dt = 0.0 if self.t is None else max(0.0, t - self.t)
        self.t = t
        for i, port in enumerate(self.tree.ports):
            lv = levels(self.part.base, self.part.effects, i, t)
            down = lv["down"] >= 0.5
            port.state, port.phys_state = (1, 3) if down else (4, 5)
            port.gbps = max(1.0, lv["gbps"])
            port.lanes = 4 if port.gbps >= 0.75 * self.part.base["gbps"] else 2
            rx = 0.0 if down else min(lv["rx_gbps"], port.gbps) * 1e9 / 8
            tx = 0.0 if down else min(lv["tx_gbps"], port.gbps) * 1e9 / 8
            port.rx_bytes += int(rx * dt)
            port.tx_bytes += int(tx * dt)
            port.rx_packets += int(rx * dt / 4096)
            port.tx_packets += int(tx * dt / 4096)
            errors = lv["errors_per_s"] * dt
            port.errors["symbol_error"] += int(round(errors * 0.8))
            port.errors["link_error_recovery"] += int(round(errors * 0.2))
            if down and port.errors["link_downed"] == 0:
                port.errors["link_downed"] = 1
            port.xmit_wait += int(lv["xmit_wait_per_s"] * dt)
            if port.hw is not None:
                hw = port.hw
                hw["np_cnp_sent"] = hw.get("np_cnp_sent", 0) + int(lv["cnp_per_s"] * dt)
                hw["rp_cnp_handled"] = hw.get("rp_cnp_handled", 0) + int(lv["cnp_per_s"] * dt)
                ecn = "np_ecn_marked_roce_packets"
                hw[ecn] = hw.get(ecn, 0) + int(lv["ecn_per_s"] * dt)
        nic = self.part.nic
        for stats in self.tree.statistics.values():
            stats[0] += int(min(nic["rx_gbps"], nic["gbps"]) * 1e9 / 8 * dt)
            stats[1] += int(min(nic["tx_gbps"], nic["gbps"]) * 1e9 / 8 * dt)
        self.tree.write()


class SimStorage:
    """A job (pid 4242) with the ``[storage]`` table's mounts open."""

    def __init__(self, part: StoragePart, proc_root: str | Path, sys_root: str | Path) -> None:
        self.part = part
        self.tree = StorageTree(proc_root, sys_root, pid=PID)
        self.mounts: list[SimMount] = []
        for i, spec in enumerate(part.mounts):
            if spec.type.startswith("nfs"):
                m = self.tree.nfs(spec.path, version=4 if spec.type == "nfs4" else 3,
                                  server=f"10.1.0.{5 + i}:/export{i}")  # fmt: skip
            elif spec.type == "lustre":
                m = self.tree.lustre(spec.path, fsname=f"fs{i}")
            elif spec.type in ("xfs", "ext4"):
                m = self.tree.local(spec.path, block=f"nvme{i}n1", fstype=spec.type)
            else:
                m = self.tree.add(SimMount(spec.path, spec.type, spec.type.partition(".")[2]
                                           or spec.type, f"0:{60 + i}"))  # fmt: skip
            m.files = (f"{spec.path.rstrip('/')}/data-{i}.bin",)
            self.mounts.append(m)
        self.tree.cwd = part.mounts[0].path
        self.t: float | None = None
        self.advance(0.0)

    def advance(self, t: float) -> None:
        dt = 0.0 if self.t is None else max(0.0, t - self.t)
        self.t = t
        for spec, m in zip(self.part.mounts, self.mounts):
            lv = levels(spec.base, self.part.effects, spec.path, t)
            read, write = lv["read_mbps"] * MB * dt, lv["write_mbps"] * MB * dt
            ops = lv["ops_per_s"] * dt if lv["ops_per_s"] >= 0 else (read + write) / 1048576
            latency = max(0.0, lv["latency_ms"])
            rtt = lv["rtt_ms"] if lv["rtt_ms"] >= 0 else 0.8 * latency
            moved = read + write
            r_ops = ops * read / moved if moved else ops
            w_ops = ops - r_ops
            self.tree.rchar += int(read)
            self.tree.wchar += int(write)
            if m.ops:  # NFS
                for name, n, sent, recv in (
                    ("READ", r_ops, 0.0, read),
                    ("WRITE", w_ops, write, 0.0),
                ):
                    v = m.ops.get(name)
                    if v is None or n <= 0:
                        continue
                    v[0] += int(n)
                    v[1] += int(n + lv["retrans_per_s"] * dt * (n / max(ops, 1e-9)))
                    v[3] += int(sent + 128 * n)
                    v[4] += int(recv + 128 * n)
                    v[6] += int(rtt * n)
                    v[7] += int(latency * n)
                m.nfs_bytes[0] += int(read)
                m.nfs_bytes[1] += int(write)
                m.nfs_bytes[4] += int(read)
                m.nfs_bytes[5] += int(write)
            elif m.llite:  # Lustre
                for name, n, moved_bytes in (("read", r_ops, read), ("write", w_ops, write)):
                    m.llite[f"{name}_bytes"][0] += int(n)
                    m.llite[f"{name}_bytes"][1] += int(moved_bytes)
                    m.llite[name][0] += int(n)
                    m.llite[name][1] += int(latency * 1000 * n)
            elif m.block is not None:  # local: the job's reads and writes reach the device
                self.tree.read_bytes += int(read)
                self.tree.write_bytes += int(write)
                span_ms = dt * 1000
                m.stat[0] += int(r_ops)
                m.stat[2] += int(read / 512)
                m.stat[3] += int(latency * r_ops)
                m.stat[4] += int(w_ops)
                m.stat[6] += int(write / 512)
                m.stat[7] += int(latency * w_ops)
                busy = min(1.0, ops * latency / max(span_ms, 1e-9)) if span_ms else 0.0
                m.stat[9] += int(busy * span_ms)
                m.stat[10] += int(latency * ops)
        self.tree.write()


class Installed:
    """A running simulated tree: advanced from a thread until ``uninstall``."""

    def __init__(self, sim: Any, root: Path, env: dict[str, str], period_s: float = 0.25):
        self.sim, self.root, self.env = sim, root, env
        self._saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True,
                                        name="sim-fabric-storage")  # fmt: skip
        self._thread.start()

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self.sim.advance(time.monotonic() - self._t0)
            except OSError:
                return  # the tree is gone (uninstalled)

    def uninstall(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self.root, ignore_errors=True)


def part_of(scenario: str, source: str) -> Any:
    """The scenario's table for ``source``, parsed; ValueError (one line) if missing or bad."""
    from collectors.sim import load_scenario

    loaded = load_scenario(scenario)
    raw = loaded.parts.get(source)
    if raw is None:
        raise ValueError(f"scenario {scenario!r} simulates {source!r} but has no [{source}] table")
    return parse_fabric(raw) if source == "fabric" else parse_storage(raw)


def install(scenario: str, source: str) -> Installed:
    """The fabric or storage source's simulator for ``scenario``."""
    part = part_of(scenario, source)
    root = Path(tempfile.mkdtemp(prefix=f"accelwatch-sim-{source}-"))
    os.chmod(root, 0o700)
    if source == "fabric":
        sim: Any = SimFabric(part, root / "sys")
        env = {ENV_FABRIC_SYS_ROOT: str(root / "sys")}
    else:
        sim = SimStorage(part, root / "proc", root / "sys")
        env = {ENV_STORAGE_PROC_ROOT: str(root / "proc"), ENV_STORAGE_SYS_ROOT: str(root / "sys")}
    return Installed(sim, root, env)
