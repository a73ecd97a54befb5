"""Fake sysfs / procfs trees in the kernel's own formats, for the fabric and storage sources.

A :class:`FabricTree` holds InfiniBand / RoCE ports and network interfaces, a
:class:`StorageTree` a process's mounts (``mountinfo``, ``mountstats``, open files, ``io``),
Lustre ``llite`` stats and block devices. State is plain numbers the caller (a scenario, a
test, the benchmark) advances; ``write()`` renders every file. Dirs 0700, files 0600; a file is
replaced atomically (written aside, renamed), so a reader never sees half of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

STATES = {1: "DOWN", 2: "INIT", 3: "ARMED", 4: "ACTIVE", 5: "ACTIVE_DEFER"}
PHYS_STATES = {1: "Sleep", 2: "Polling", 3: "Disabled", 4: "PortConfigurationTraining",
               5: "LinkUp", 6: "LinkErrorRecovery", 7: "Phy Test"}  # fmt: skip
WIDTH = {1: "1X", 2: "2X", 4: "4X", 8: "8X", 12: "12X"}
SPEED_NAME = {2.5: "SDR", 5: "DDR", 10: "QDR", 14: "FDR", 25: "EDR", 50: "HDR", 100: "NDR"}
ERROR_FILES = ("symbol_error", "link_downed", "link_error_recovery", "port_rcv_errors",
               "port_rcv_remote_physical_errors", "port_rcv_switch_relay_errors",
               "port_xmit_discards", "port_xmit_constraint_errors", "port_rcv_constraint_errors",
               "local_link_integrity_errors", "excessive_buffer_overrun_errors", "VL15_dropped")  # fmt: skip
HW_FILES = ("np_cnp_sent", "rp_cnp_handled", "np_ecn_marked_roce_packets", "out_of_buffer",
            "packet_seq_err", "local_ack_timeout_err", "roce_adp_retrans", "out_of_sequence",
            "duplicate_request", "rnr_nak_retry_err", "implied_nak_seq_err")  # fmt: skip
NFS3_OPS = ("NULL", "GETATTR", "SETATTR", "LOOKUP", "ACCESS", "READLINK", "READ", "WRITE",
            "CREATE", "MKDIR", "SYMLINK", "MKNOD", "REMOVE", "RMDIR", "RENAME", "LINK",
            "READDIR", "READDIRPLUS", "FSSTAT", "FSINFO", "PATHCONF", "COMMIT")  # fmt: skip
NFS4_OPS = ("NULL", "READ", "WRITE", "COMMIT", "OPEN", "OPEN_CONFIRM", "OPEN_NOATTR",
            "OPEN_DOWNGRADE", "CLOSE", "SETATTR", "FSINFO", "RENEW", "SETCLIENTID",
            "SETCLIENTID_CONFIRM", "LOCK", "LOCKT", "LOCKU", "ACCESS", "GETATTR", "LOOKUP",
            "LOOKUP_ROOT", "REMOVE", "RENAME", "LINK", "SYMLINK", "CREATE", "PATHCONF", "STATFS",
            "READLINK", "READDIR", "SERVER_CAPS", "DELEGRETURN", "GETACL", "SETACL",
            "FS_LOCATIONS", "RELEASE_LOCKOWNER", "SECINFO", "EXCHANGE_ID", "CREATE_SESSION",
            "DESTROY_SESSION", "SEQUENCE", "GET_LEASE_TIME", "RECLAIM_COMPLETE", "LAYOUTGET",
            "GETDEVICEINFO", "LAYOUTCOMMIT", "LAYOUTRETURN", "SECINFO_NO_NAME",
            "TEST_STATEID", "FREE_STATEID", "GETDEVICELIST", "BIND_CONN_TO_SESSION",
            "DESTROY_CLIENTID", "SEEK", "ALLOCATE", "DEALLOCATE", "LAYOUTSTATS", "CLONE",
            "COPY", "OFFLOAD_CANCEL", "LOOKUPP", "LAYOUTERROR", "COPY_NOTIFY")  # fmt: skip


_WRITTEN: dict[str, str] = {}


def write_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` 0600, atomically (a reader sees the old or the new file).

    A file whose text is what this process last wrote there is left alone: a rename costs a
    journal commit on some filesystems, and most counters do not move each tick.
    """
    key = str(path)
    if _WRITTEN.get(key) == text and path.exists():
        return
    _WRITTEN[key] = text
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass
class SimPort:
    """One port's state and cumulative counters (bytes, not words: rendering divides by 4)."""

    device: str
    port: int = 1
    link_layer: str = "InfiniBand"
    state: int = 4
    phys_state: int = 5
    gbps: float = 200.0
    lanes: int = 4
    #: ``64``: data in counters_ext/*_64 too; ``32``: counters/ wrap at 2**32 words; ``none``:
    #: every counter reads ``N/A (no PMA)``.
    counters: str = "64"
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_FILES, 0))
    xmit_wait: int = 0
    hw: dict[str, int] | None = None
    netdev: str | None = None


class FabricTree:
    """``<root>/class/infiniband/<dev>/ports/<n>/...`` and ``<root>/class/net/<if>/...``."""

    def __init__(self, sys_root: str | Path) -> None:
        self.root = Path(sys_root)
        self.ports: list[SimPort] = []
        self.interfaces: dict[str, tuple[int, str, tuple[str, ...]]] = {}
        #: Interface → [rx_bytes, tx_bytes] for ``statistics/`` (what the host source counts).
        self.statistics: dict[str, list[int]] = {}

    def add_port(self, port: SimPort) -> SimPort:
        self.ports.append(port)
        return port

    def interface(self, name: str, speed_mbps: int, operstate: str = "up",
                  parents: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.interfaces[name] = (speed_mbps, operstate, parents)

    def write(self) -> None:
        for p in self.ports:
            self._write_port(p)
        for name, (speed, state, parents) in self.interfaces.items():
            ndir = self.root / "class" / "net" / name
            write_file(ndir / "speed", f"{speed}\n")
            write_file(ndir / "operstate", f"{state}\n")
            write_file(ndir / "type", "32\n" if name.startswith("ib") else "1\n")  # IPoIB: 32
            if name in self.statistics:
                rx, tx = self.statistics[name]
                write_file(ndir / "statistics" / "rx_bytes", f"{rx}\n")
                write_file(ndir / "statistics" / "tx_bytes", f"{tx}\n")
            if name.startswith("bond") and parents:
                write_file(ndir / "bonding" / "slaves", " ".join(parents) + "\n")
            for parent in parents:
                link = ndir / f"lower_{parent}"
                if not link.is_symlink():
                    os.symlink(f"../{parent}", link)

    def _write_port(self, p: SimPort) -> None:
        ddir = self.root / "class" / "infiniband" / p.device
        pdir = ddir / "ports" / str(p.port)
        if not (ddir / "fw_ver").exists():
            write_file(ddir / "fw_ver", "28.39.1002\n")
            write_file(ddir / "hca_type", "MT4129\n")
        if not (pdir / "link_layer").exists():  # every port's own (a dual-port HCA's second too)
            write_file(pdir / "link_layer", f"{p.link_layer}\n")
            if p.netdev:
                write_file(pdir / "gid_attrs" / "ndevs" / "0", f"{p.netdev}\n")
        write_file(pdir / "state", f"{p.state}: {STATES.get(p.state, '?')}\n")
        write_file(pdir / "phys_state", f"{p.phys_state}: {PHYS_STATES.get(p.phys_state, '?')}\n")
        per_lane = p.gbps / p.lanes
        name = SPEED_NAME.get(per_lane, "")
        rate = (
            f"{p.gbps:g} Gb/sec ({WIDTH.get(p.lanes, f'{p.lanes}X')}{' ' + name if name else ''})"
        )
        write_file(pdir / "rate", rate + "\n")
        na = p.counters == "none"
        wrap = (1 << 32) if p.counters == "32" else (1 << 64)
        data = {
            "port_rcv_data": (p.rx_bytes // 4) % wrap,
            "port_xmit_data": (p.tx_bytes // 4) % wrap,
            "port_rcv_packets": p.rx_packets % wrap,
            "port_xmit_packets": p.tx_packets % wrap,
            "port_xmit_wait": p.xmit_wait,
            **p.errors,
        }
        for key, value in data.items():
            write_file(pdir / "counters" / key, "N/A (no PMA)\n" if na else f"{value}\n")
        if p.counters == "64":
            ext = {"port_rcv_data_64": p.rx_bytes // 4, "port_xmit_data_64": p.tx_bytes // 4,
                   "port_rcv_packets_64": p.rx_packets, "port_xmit_packets_64": p.tx_packets}  # fmt: skip
            for key, value in ext.items():
                write_file(pdir / "counters_ext" / key, f"{value}\n")
        if p.hw is not None:
            for key in HW_FILES:
                write_file(pdir / "hw_counters" / key, f"{p.hw.get(key, 0)}\n")


@dataclass
class SimMount:
    """One mount of the simulated job and its counters (``kind`` picks the files written)."""

    point: str
    fstype: str
    source: str
    majmin: str
    #: nfs: op → [ops, trans, timeouts, bytes_sent, bytes_recv, queue_ms, rtt_ms, exec_ms, errors]
    ops: dict[str, list[int]] = field(default_factory=dict)
    #: nfs ``bytes:``: normal read/write, direct read/write, server read/write, pages read/write
    nfs_bytes: list[int] = field(default_factory=lambda: [0] * 8)
    #: nfs ``age:`` (seconds mounted), ``events:`` (27 VFS/NFS event counts) and the ``xprt:``
    #: transport line's numbers after ``tcp`` (a busy client moves all three every second)
    nfs_age: int = 3600
    nfs_events: list[int] = field(default_factory=lambda: [0] * 27)
    nfs_xprt: list[int] = field(default_factory=lambda: [0, 0, 1, 0, 9, 40511, 40511, 0, 41112,
                                                         0, 2, 0, 10])  # fmt: skip
    #: lustre llite stats name → [samples, sum]
    llite: dict[str, list[int]] = field(default_factory=dict)
    #: block device name and its 17 stat fields
    block: str | None = None
    stat: list[int] = field(default_factory=lambda: [0] * 17)
    files: tuple[str, ...] = ()


class StorageTree:
    """``<proc>/<pid>/{mountinfo,mountstats,fd,cwd,io}``, Lustre stats and ``<sys>/block``."""

    BASE_MOUNTS = (
        "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
        "23 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw",
        "25 1 0:24 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,mode=600",
    )

    def __init__(self, proc_root: str | Path, sys_root: str | Path, pid: int = 4242) -> None:
        self.proc = Path(proc_root)
        self.sys = Path(sys_root)
        self.pid = pid
        self.mounts: list[SimMount] = []
        self.cwd = "/"
        self.rchar = 0
        self.wchar = 0
        self.read_bytes = 0  # what reached a block device (io's read_bytes / write_bytes)
        self.write_bytes = 0

    def add(self, mount: SimMount) -> SimMount:
        self.mounts.append(mount)
        return mount

    def nfs(self, point: str, version: int = 4, server: str = "10.1.0.5:/export") -> SimMount:
        ops = NFS4_OPS if version == 4 else NFS3_OPS
        fstype = "nfs4" if version == 4 else "nfs"
        majmin = f"0:{50 + len(self.mounts)}"
        return self.add(SimMount(point, fstype, server, majmin, {o: [0] * 9 for o in ops}))

    def lustre(self, point: str, fsname: str = "scratch") -> SimMount:
        llite = {k: [0, 0] for k in ("read_bytes", "write_bytes", "read", "write", "open")}
        majmin = f"0:{50 + len(self.mounts)}"
        return self.add(SimMount(point, "lustre", f"10.2.0.1@o2ib:/{fsname}", majmin, llite=llite))

    def local(self, point: str, block: str = "nvme0n1", fstype: str = "xfs") -> SimMount:
        majmin = f"259:{len(self.mounts)}"
        return self.add(SimMount(point, fstype, f"/dev/{block}", majmin, block=block))

    def write(self) -> None:
        pdir = self.proc / str(self.pid)
        lines = list(self.BASE_MOUNTS)
        stats = [
            "device proc mounted on /proc with fstype proc",
            "device sysfs mounted on /sys with fstype sysfs",
        ]
        for i, m in enumerate(self.mounts):
            point = m.point.replace(" ", "\\040")
            lines.append(f"{100 + i} 1 {m.majmin} / {point} rw,relatime shared:{40 + i} - "
                         f"{m.fstype} {m.source} rw")  # fmt: skip
            stats.append(self._mountstats(m, point))
            if m.fstype == "lustre":
                self._write_llite(m)
            if m.block is not None:
                bdir = self.sys / "block" / m.block
                write_file(bdir / "dev", f"{m.majmin}\n")
                write_file(bdir / "stat", " ".join(f"{v:8d}" for v in m.stat) + "\n")
        write_file(pdir / "mountinfo", "\n".join(lines) + "\n")
        write_file(pdir / "mountstats", "\n".join(stats) + "\n")
        write_file(pdir / "io", f"rchar: {self.rchar}\nwchar: {self.wchar}\nsyscr: 0\n"
                                f"syscw: 0\nread_bytes: {self.read_bytes}\n"
                                f"write_bytes: {self.write_bytes}\n"
                                "cancelled_write_bytes: 0\n")  # fmt: skip
        fd_dir = pdir / "fd"
        fd_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        want = [f for m in self.mounts for f in m.files]
        for i, target in enumerate(want):
            link = fd_dir / str(10 + i)
            if link.is_symlink() and os.readlink(link) == target:
                continue
            if link.is_symlink():
                link.unlink()
            os.symlink(target, link)
        cwd = pdir / "cwd"
        if not cwd.is_symlink():
            os.symlink(self.cwd, cwd)

    def _mountstats(self, m: SimMount, point: str) -> str:
        if not m.fstype.startswith("nfs"):
            return f"device {m.source} mounted on {point} with fstype {m.fstype}"
        vers = "4.2" if m.fstype == "nfs4" else "3"
        prog = 4 if m.fstype == "nfs4" else 3
        out = [
            f"device {m.source} mounted on {point} with fstype {m.fstype} statvers=1.1",
            f"\topts:\trw,vers={vers},rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,"
            "timeo=600,retrans=2,sec=sys,local_lock=none",
            f"\tage:\t{m.nfs_age}",
            "\tcaps:\tcaps=0x3ffbffff,wtmult=512,dtsize=1048576,bsize=0,namlen=255",
            "\tsec:\tflavor=1,pseudoflavor=1",
            "\tevents:\t" + " ".join(map(str, m.nfs_events)),
            "\tbytes:\t" + " ".join(str(v) for v in m.nfs_bytes),
            f"\tRPC iostats version: 1.1  p/v: 100003/{prog} (nfs)",
            "\txprt:\ttcp " + " ".join(map(str, m.nfs_xprt)),
            "\tper-op statistics",
        ]
        for name, v in m.ops.items():
            out.append(f"\t{name:>12}: " + " ".join(str(x) for x in v))
        return "\n".join(out) + "\n"

    def _write_llite(self, m: SimMount) -> None:
        fsname = m.source.rpartition(":/")[2]
        units = {"read_bytes": "bytes", "write_bytes": "bytes"}
        lines = [
            "snapshot_time             1733050000.000000000 secs.nsecs",
            "start_time                1733040000.000000000 secs.nsecs",
            "elapsed_time              10000.000000000 secs.nsecs",
        ]
        for name, (count, total) in m.llite.items():
            if count == 0:
                continue  # Lustre leaves out what never happened
            unit = units.get(name, "usecs")
            lines.append(f"{name:<26}{count} samples [{unit}] 1 {max(total, 1)} {total} "
                         f"{total * 2}")  # fmt: skip
        write_file(self.proc / "fs" / "lustre" / "llite" / f"{fsname}-ffff9a1b2c3d4000" / "stats",
                   "\n".join(lines) + "\n")  # fmt: skip
